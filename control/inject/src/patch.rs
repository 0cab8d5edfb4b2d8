//! RFC 6902 JSON-patch operations, the one form in which a pod's mutation is computed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One JSON-patch operation (RFC 6902), relative to the pod object as the API server sends it
/// in an `AdmissionReview` (paths start with `/metadata` or `/spec`). Operations apply in
/// order, each to the result of the previous ones, as RFC 6902 requires; serialized with serde
/// they are exactly the JSON an admission response carries (base64 of the array).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum PatchOp {
    /// Adds `value` at `path`: a new member of an object (replacing one of the same name), an
    /// array element inserted before index `n` (`/n`) or appended (`/-`).
    Add {
        /// JSON pointer (RFC 6901).
        path: String,
        /// The value added.
        value: Value,
    },
    /// Removes the member or element at `path`, which must exist.
    Remove {
        /// JSON pointer (RFC 6901).
        path: String,
    },
    /// Replaces the value at `path`, which must exist.
    Replace {
        /// JSON pointer (RFC 6901).
        path: String,
        /// The new value.
        value: Value,
    },
}

impl PatchOp {
    /// The operation's JSON pointer.
    pub fn path(&self) -> &str {
        match self {
            PatchOp::Add { path, .. }
            | PatchOp::Remove { path }
            | PatchOp::Replace { path, .. } => path,
        }
    }
}

/// One reference token of a JSON pointer, escaped (`~` → `~0`, `/` → `~1`).
pub(crate) fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The reference tokens of a JSON pointer, unescaped; `None` unless it starts with `/`.
pub(crate) fn tokens(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn serializes_as_rfc_6902() {
        let ops = vec![
            PatchOp::Add {
                path: "/metadata/annotations/svidcar.io~1status".into(),
                value: json!("x"),
            },
            PatchOp::Remove {
                path: "/spec/containers/0/livenessProbe/tcpSocket".into(),
            },
        ];
        let text = serde_json::to_string(&ops).unwrap();
        assert_eq!(
            text,
            r#"[{"op":"add","path":"/metadata/annotations/svidcar.io~1status","value":"x"},{"op":"remove","path":"/spec/containers/0/livenessProbe/tcpSocket"}]"#
        );
        let back: Vec<PatchOp> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ops);
        assert_eq!(ops[1].path(), "/spec/containers/0/livenessProbe/tcpSocket");
    }

    #[test]
    fn pointer_escaping_round_trips() {
        assert_eq!(escape("svidcar.io/status"), "svidcar.io~1status");
        assert_eq!(escape("a~/b"), "a~0~1b");
        assert_eq!(
            tokens("/metadata/annotations/a~0~1b").unwrap(),
            ["metadata", "annotations", "a~/b"]
        );
        assert_eq!(tokens("").map(|t| t.len()), None);
    }
}
