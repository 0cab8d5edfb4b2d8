//! Reading a policy directory (the `fs` feature): the one I/O edge of this crate, used by the
//! proxy's local policy watch and by the control plane. Parsing stays in [`crate::parse_set`].

use std::path::{Path, PathBuf};

use crate::{parse_set, Policy, PolicyError};

/// The `*.yaml` / `*.yml` files of a directory, sorted by name.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let read_err = |e: std::io::Error| PolicyError::Read {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The content version of a policy directory: a hash over the names and bytes of its policy
/// files, to notice changes cheaply. `None` when the directory or a file cannot be read.
pub fn dir_version(dir: &Path) -> Option<String> {
    let files = policy_files(dir).ok()?;
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for f in files {
        parts.push(f.display().to_string().into_bytes());
        parts.push(std::fs::read(&f).ok()?);
    }
    Some(crate::content_version(parts.iter().map(Vec::as_slice)))
}

/// Loads and validates every policy file in `dir`; all errors are returned, not just the first.
/// Names must be unique across the directory.
pub fn load_dir(dir: &Path) -> Result<Vec<Policy>, Vec<PolicyError>> {
    let files = policy_files(dir).map_err(|e| vec![e])?;
    let mut texts = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for path in files {
        let file = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => texts.push((file, text)),
            Err(e) => errors.push(PolicyError::Read {
                path: file,
                message: e.to_string(),
            }),
        }
    }
    match parse_set(texts.iter().map(|(f, t)| (f.as_str(), t.as_str()))) {
        Ok(p) if errors.is_empty() => Ok(p),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.extend(e);
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_names_across_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let doc = "kind: AuthorizationPolicy\nname: same\naction: DENY\n";
        std::fs::write(dir.path().join("a.yaml"), doc).unwrap();
        std::fs::write(dir.path().join("b.yml"), doc).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let errs = load_dir(dir.path()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .to_string()
                .contains("b.yml: document 1: name: \"same\" is already used in"),
            "{}",
            errs[0]
        );
        std::fs::remove_file(dir.path().join("b.yml")).unwrap();
        assert_eq!(load_dir(dir.path()).unwrap().len(), 1);
    }
}
