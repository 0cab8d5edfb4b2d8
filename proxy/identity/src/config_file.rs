//! Loading a command's configuration, the same way for every command: built-in defaults (the
//! struct's `Default`, each documented on its field), then an optional YAML file (`--config`),
//! then flags and `SVIDCAR_*` environment variables (an overlay of `Option`s the command
//! applies with [`set`] / [`set_some`]); validated as a whole before anything binds. Every error
//! names the file and the setting, e.g. `agent.yaml (with flags/environment): svid_ttl: ...`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema (the message names the field and line).
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field path.
        message: String,
    },
    /// A setting has a value that cannot work.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        /// `flags/environment`, or the file (with flags/environment).
        origin: String,
        /// Setting name as spelled in the file (the flag is the same with dashes), e.g.
        /// `upstream.join_wait`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses a YAML document of `T`; errors name `path` and the field.
pub fn from_yaml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Where settings came from, for [`ConfigError::Invalid`]: `flags/environment`, or
/// `FILE (with flags/environment)`.
pub fn origin(path: Option<&Path>) -> String {
    match path {
        Some(path) => format!("{} (with flags/environment)", path.display()),
        None => "flags/environment".to_owned(),
    }
}

/// Defaults, then the file at `path` (if any), then `overlay` (the flags and environment
/// variables), then `validate`, which returns the setting name and the problem.
pub fn load<T, F>(
    path: Option<&Path>,
    overlay: impl FnOnce(&mut T),
    validate: impl FnOnce(&T) -> Result<(), (F, String)>,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Default,
    F: Into<String>,
{
    let (mut config, origin) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            (from_yaml(path, &text)?, origin(Some(path)))
        }
        None => (T::default(), origin(None)),
    };
    overlay(&mut config);
    validate(&config).map_err(|(field, message)| ConfigError::Invalid {
        origin,
        field: field.into(),
        message,
    })?;
    Ok(config)
}

/// Overlay step: a given flag replaces the setting.
pub fn set<T: Clone>(slot: &mut T, flag: &Option<T>) {
    if let Some(v) = flag {
        *slot = v.clone();
    }
}

/// Overlay step for an optional setting: a given flag replaces it, an absent one leaves it.
pub fn set_some<T: Clone>(slot: &mut Option<T>, flag: &Option<T>) {
    if flag.is_some() {
        slot.clone_from(flag);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Dur;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        ttl: Option<Dur>,
        name: String,
    }

    fn ok(_: &Demo) -> Result<(), (&'static str, String)> {
        Ok(())
    }

    #[test]
    fn file_then_overlay_then_validation_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.yaml");
        std::fs::write(&path, "ttl: 5s\nname: file\n").unwrap();
        let d: Demo = load(
            Some(&path),
            |d: &mut Demo| set(&mut d.name, &Some("flag".into())),
            ok,
        )
        .unwrap();
        assert_eq!((d.ttl, d.name.as_str()), ("5s".parse().ok(), "flag"));
        let e = load(
            Some(&path),
            |_: &mut Demo| {},
            |_| Err(("ttl", "too short".into())),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.ends_with("demo.yaml (with flags/environment): ttl: too short"),
            "{e}"
        );
        let e = load(
            None,
            |_: &mut Demo| {},
            |_| Err(("ttl", "too short".into())),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "flags/environment: ttl: too short");

        std::fs::write(&path, "ttl: 5 s\n").unwrap();
        let e = load::<Demo, &str>(Some(&path), |_| {}, ok)
            .unwrap_err()
            .to_string();
        assert!(e.contains("demo.yaml: ttl: ") && e.contains("unit"), "{e}");
        std::fs::write(&path, "tll: 5s\n").unwrap();
        let e = load::<Demo, &str>(Some(&path), |_| {}, ok)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("demo.yaml: ") && e.contains("unknown field `tll`"),
            "{e}"
        );
        let e = load::<Demo, &str>(Some(&dir.path().join("none.yaml")), |_| {}, ok).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }

    #[test]
    fn overlay_steps() {
        let mut n = 1;
        set(&mut n, &None);
        assert_eq!(n, 1);
        set(&mut n, &Some(2));
        assert_eq!(n, 2);
        let mut o = Some(1);
        set_some(&mut o, &None);
        assert_eq!(o, Some(1));
        set_some(&mut o, &Some(3));
        assert_eq!(o, Some(3));
    }
}
