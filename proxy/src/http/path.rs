//! The request path as policy sees it: one canonical form, so that `/admin`, `//admin`,
//! `/%61dmin`, `/x/../admin` and `/admin/.` cannot be told apart by a rule and cannot slip past
//! a DENY. The app receives the same normalized path that was authorized. Pure.

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadPath(pub(crate) &'static str);

/// Normalizes an origin-form path (RFC 3986 §6.2.2): percent-encoded unreserved characters
/// and `/` (`%2F`) are decoded, other escapes kept in upper case; runs of `/` merged; `.` and
/// `..` segments resolved (never above the root). `*` and paths not starting with `/` (e.g.
/// `CONNECT`'s authority form) are returned as they are.
pub(crate) fn normalize(path: &str) -> Result<String, BadPath> {
    if !path.starts_with('/') {
        return Ok(path.to_owned());
    }
    let decoded = decode(path)?;
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "" => trailing = i == last,
            "." => trailing = i == last,
            ".." => {
                segments.pop();
                trailing = i == last;
            }
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Decodes `%XX` of unreserved characters and `/`; keeps other escapes (upper-cased hex).
fn decode(path: &str) -> Result<String, BadPath> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            if !(b.is_ascii_graphic()) {
                return Err(BadPath("a path byte that is not visible ASCII"));
            }
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(BadPath("a '%' not followed by two hex digits"))?;
        if hex.is_ascii_alphanumeric() || b"-._~/".contains(&hex) {
            out.push(char::from(hex));
        } else {
            out.push_str(&format!("%{hex:02X}"));
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_path_becomes_one() {
        let cases = [
            ("/admin", "/admin"),
            ("//admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/x/./../admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/admin/.", "/admin/"),
            ("/admin/", "/admin/"),
            ("/api//v1///items", "/api/v1/items"),
            ("/a%2Fb", "/a/b"),
            ("/a%2fb/..", "/a/"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/%7Euser", "/~user"),
            ("/", "/"),
            ("/.", "/"),
            ("/..", "/"),
            ("*", "*"),
            ("example.org:443", "example.org:443"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn broken_escapes_are_refused() {
        for raw in ["/a%", "/a%2", "/a%zz", "/a%2G"] {
            assert!(normalize(raw).is_err(), "{raw}");
        }
    }
}
