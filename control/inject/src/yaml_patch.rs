//! Applies [`PatchOp`]s to a YAML tree, keeping the order of every mapping: the CLI's way of
//! applying exactly the operations the webhook would send.

use serde_json::Value as Json;
use serde_yaml_ng::{Mapping, Value as Yaml};

use crate::patch::{tokens, PatchOp};

/// An operation that does not fit the tree (a bug of ours, not of the input: the operations
/// are computed from the same tree).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply JSON patch at {path}: {reason}")]
pub(crate) struct ApplyError {
    path: String,
    reason: &'static str,
}

/// Converts a JSON value to YAML. Objects come out with `name` first, then the other keys in
/// the order serde_json keeps them (sorted), which reads well for containers, ports and env.
pub(crate) fn to_yaml(v: &Json) -> Yaml {
    match v {
        Json::Null => Yaml::Null,
        Json::Bool(b) => Yaml::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Yaml::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                Yaml::Number(u.into())
            } else {
                Yaml::Number(n.as_f64().unwrap_or_default().into())
            }
        }
        Json::String(s) => Yaml::String(s.clone()),
        Json::Array(items) => Yaml::Sequence(items.iter().map(to_yaml).collect()),
        Json::Object(map) => {
            let mut out = Mapping::new();
            if let Some(name) = map.get("name") {
                out.insert(Yaml::String("name".into()), to_yaml(name));
            }
            for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "name") {
                out.insert(Yaml::String(k.clone()), to_yaml(v));
            }
            Yaml::Mapping(out)
        }
    }
}

fn index(token: &str, len: usize, allow_end: bool) -> Option<usize> {
    if token == "-" {
        return allow_end.then_some(len);
    }
    // RFC 6901: no leading zeros, digits only.
    if token.is_empty()
        || (token.len() > 1 && token.starts_with('0'))
        || !token.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    token
        .parse()
        .ok()
        .filter(|i| *i < len + usize::from(allow_end))
}

/// Applies `op` to `doc`, as RFC 6902 defines it.
pub(crate) fn apply(doc: &mut Yaml, op: &PatchOp) -> Result<(), ApplyError> {
    let err = |reason| ApplyError {
        path: op.path().to_owned(),
        reason,
    };
    let mut toks = tokens(op.path()).ok_or_else(|| err("not a JSON pointer"))?;
    let last = toks.pop().ok_or_else(|| err("the whole document"))?;
    let mut parent = &mut *doc;
    for t in &toks {
        parent = match parent {
            Yaml::Mapping(m) => m.get_mut(t.as_str()),
            Yaml::Sequence(s) => {
                let len = s.len();
                index(t, len, false).and_then(|i| s.get_mut(i))
            }
            _ => None,
        }
        .ok_or_else(|| err("no such parent"))?;
    }
    match (op, parent) {
        (PatchOp::Add { value, .. }, Yaml::Mapping(m)) => {
            let v = to_yaml(value);
            match m.get_mut(last.as_str()) {
                Some(slot) => *slot = v,
                None => {
                    m.insert(Yaml::String(last), v);
                }
            }
        }
        (PatchOp::Add { value, .. }, Yaml::Sequence(s)) => {
            let i = index(&last, s.len(), true).ok_or_else(|| err("index out of range"))?;
            s.insert(i, to_yaml(value));
        }
        (PatchOp::Replace { value, .. }, Yaml::Mapping(m)) => {
            *m.get_mut(last.as_str())
                .ok_or_else(|| err("nothing to replace"))? = to_yaml(value);
        }
        (PatchOp::Replace { value, .. }, Yaml::Sequence(s)) => {
            let i = index(&last, s.len(), false).ok_or_else(|| err("index out of range"))?;
            s[i] = to_yaml(value);
        }
        (PatchOp::Remove { .. }, Yaml::Mapping(m)) => {
            m.shift_remove(last.as_str())
                .ok_or_else(|| err("nothing to remove"))?;
        }
        (PatchOp::Remove { .. }, Yaml::Sequence(s)) => {
            let i = index(&last, s.len(), false).ok_or_else(|| err("index out of range"))?;
            s.remove(i);
        }
        _ => return Err(err("the parent is neither a mapping nor a sequence")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn yaml(s: &str) -> Yaml {
        serde_yaml_ng::from_str(s).unwrap()
    }

    fn run(doc: &str, ops: serde_json::Value) -> Result<String, ApplyError> {
        let mut doc = yaml(doc);
        let ops: Vec<PatchOp> = serde_json::from_value(ops).unwrap();
        for op in &ops {
            apply(&mut doc, op)?;
        }
        Ok(serde_yaml_ng::to_string(&doc).unwrap())
    }

    #[test]
    fn keeps_order_and_applies_in_sequence() {
        let out = run(
            "z: 1\nspec:\n  list: [a, c]\n  b: 2\n  a: 1\n",
            json!([
                {"op": "add", "path": "/spec/list/1", "value": "b"},
                {"op": "add", "path": "/spec/list/-", "value": {"image": "i", "name": "n"}},
                {"op": "add", "path": "/spec/new~1key", "value": true},
                {"op": "replace", "path": "/spec/b", "value": 3},
                {"op": "remove", "path": "/spec/a"},
                {"op": "remove", "path": "/spec/list/0"},
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            "z: 1\nspec:\n  list:\n  - b\n  - c\n  - name: n\n    image: i\n  b: 3\n  new/key: true\n"
        );
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let doc = "a: [1]\nb: x\n";
        for (op, reason) in [
            (
                json!({"op": "add", "path": "/a/2", "value": 0}),
                "index out of range",
            ),
            (
                json!({"op": "add", "path": "/a/01", "value": 0}),
                "index out of range",
            ),
            (
                json!({"op": "replace", "path": "/c", "value": 0}),
                "nothing to replace",
            ),
            (
                json!({"op": "remove", "path": "/a/1"}),
                "index out of range",
            ),
            (
                json!({"op": "add", "path": "/x/y", "value": 0}),
                "no such parent",
            ),
            (
                json!({"op": "add", "path": "/b/y", "value": 0}),
                "the parent is neither",
            ),
            (
                json!({"op": "add", "path": "a", "value": 0}),
                "not a JSON pointer",
            ),
        ] {
            let e = run(doc, json!([op])).unwrap_err().to_string();
            assert!(e.contains(reason), "{e}");
        }
    }
}
