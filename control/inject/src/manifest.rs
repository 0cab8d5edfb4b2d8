//! [`inject_manifest`]: `svidcar inject` on one YAML stream, a pure function from text to text.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_yaml_ng::Value as Yaml;

use crate::config::InjectConfig;
use crate::documents::{split, RawDocument};
use crate::error::InjectError;
use crate::pod::{opt_out, pod_patch, PodDecision, SkipReason};
use crate::workload::{shape, Shape};
use crate::yaml_patch;

/// The injected stream and what happened to each pod in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// The stream: documents in their order, those without an injected pod byte for byte as
    /// they were, the others re-serialized (their leading and trailing comment lines kept).
    pub output: String,
    /// One entry per pod or pod template found, in order.
    pub pods: Vec<PodReport>,
}

/// What happened to one pod or pod template.
#[derive(Debug, Clone, PartialEq)]
pub struct PodReport {
    /// Where it is.
    pub at: Location,
    /// Injected or skipped.
    pub outcome: Outcome,
}

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The sidecar was added; the notes say what the user should know.
    Injected(Vec<Note>),
    /// Left as it was.
    Skipped(SkipReason),
}

/// Something the user should know about an injected pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// Legacy sidecar in a pod that runs to completion (`restartPolicy` `Never` or `OnFailure`:
    /// Jobs, CronJobs): the proxy keeps running unless told to stop.
    RunToCompletion,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::RunToCompletion => f.write_str(
                "legacy sidecar in a pod that runs to completion: the app must \
                 `POST http://127.0.0.1:15020/shutdown` when done, or the pod never completes \
                 (native sidecars, the default, need no such thing)",
            ),
        }
    }
}

/// An object in a stream: document number, line, kind and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based document number in the stream.
    pub document: usize,
    /// 1-based line where the document's content starts.
    pub line: usize,
    /// The item's 0-based index when the object is in a `kind: List`.
    pub item: Option<usize>,
    /// `kind` of the object.
    pub kind: String,
    /// `metadata.name` (or `generateName`), empty when it has none.
    pub name: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {} (line {})", self.document, self.line)?;
        if let Some(i) = self.item {
            write!(f, ", items[{i}]")?;
        }
        let name = if self.name.is_empty() {
            "(unnamed)"
        } else {
            &self.name
        };
        write!(f, ", {}/{name}", self.kind)
    }
}

/// Why a stream could not be injected. Nothing is written then: the whole stream or nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A document is not valid YAML (`line` is the stream's line of the problem).
    #[error("document {document} (line {line}): invalid YAML: {message}")]
    Yaml {
        /// 1-based document number.
        document: usize,
        /// 1-based line in the stream.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A pod (template) could not be injected.
    #[error("{at}: {source}")]
    Pod {
        /// The object.
        at: Box<Location>,
        /// What is wrong.
        source: InjectError,
    },
    /// A workload without the shape Kubernetes requires (no pod template, a template that is
    /// not a mapping, keys that are not strings).
    #[error("{at}: {message}")]
    Object {
        /// The object.
        at: Box<Location>,
        /// What is wrong.
        message: String,
    },
}

fn str_at<'a>(v: &'a Yaml, key: &str) -> &'a str {
    v.get(key).and_then(Yaml::as_str).unwrap_or_default()
}

/// Injects every pod and pod template of a YAML stream (one or more documents). See the crate
/// documentation for what is touched and what is not.
pub fn inject_manifest(text: &str, cfg: &InjectConfig) -> Result<Injection, ManifestError> {
    let mut output = String::with_capacity(text.len() * 2);
    let mut pods = Vec::new();
    for (i, raw) in split(text).into_iter().enumerate() {
        let document = i + 1;
        if raw.is_empty() {
            output.push_str(raw.text);
            continue;
        }
        let mut doc: Yaml =
            serde_yaml_ng::from_str(raw.text).map_err(|e| yaml_error(&raw, document, &e))?;
        let line = raw.content_line();
        let mut changed = false;
        visit(
            &mut doc,
            (document, line),
            None,
            cfg,
            &mut pods,
            &mut changed,
        )?;
        if changed {
            output.push_str(
                &render(&raw, &doc).map_err(|message| ManifestError::Object {
                    at: Box::new(locate(&doc, (document, line), None)),
                    message,
                })?,
            );
        } else {
            output.push_str(raw.text);
        }
    }
    Ok(Injection { output, pods })
}

/// The parser's error with lines counted in the stream, not in the document.
fn yaml_error(raw: &RawDocument<'_>, document: usize, e: &serde_yaml_ng::Error) -> ManifestError {
    let mut message = e.to_string();
    let mut line = raw.first_line;
    if let Some(l) = e.location() {
        line = raw.first_line + l.line().saturating_sub(1);
        message = message.replace(
            &format!("at line {} column {}", l.line(), l.column()),
            &format!("at line {line} column {}", l.column()),
        );
    }
    ManifestError::Yaml {
        document,
        line,
        message,
    }
}

fn locate(obj: &Yaml, (document, line): (usize, usize), item: Option<usize>) -> Location {
    let meta = obj.get("metadata");
    let name = meta
        .map(|m| match str_at(m, "name") {
            "" => str_at(m, "generateName"),
            n => n,
        })
        .unwrap_or_default();
    Location {
        document,
        line,
        item,
        kind: str_at(obj, "kind").to_owned(),
        name: name.to_owned(),
    }
}

/// Injects the pods in `obj` (recursing into a List's items); `changed` when any was.
fn visit(
    obj: &mut Yaml,
    doc: (usize, usize),
    item: Option<usize>,
    cfg: &InjectConfig,
    pods: &mut Vec<PodReport>,
    changed: &mut bool,
) -> Result<(), ManifestError> {
    let at = locate(obj, doc, item);
    let object_error = |message: String| ManifestError::Object {
        at: Box::new(at.clone()),
        message,
    };
    let path = match shape(str_at(obj, "apiVersion"), str_at(obj, "kind")) {
        Shape::Other => return Ok(()),
        Shape::List => {
            if let Some(Yaml::Sequence(items)) = obj.get_mut("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    visit(it, doc, Some(i), cfg, pods, changed)?;
                }
            }
            return Ok(());
        }
        Shape::Pod => &[][..],
        Shape::Template(path) => path,
    };
    // The workload's own opt-out (for a Pod, the pod's, which pod_patch checks as well).
    let meta: ObjectMeta = match obj.get("metadata") {
        None | Some(Yaml::Null) => ObjectMeta::default(),
        Some(m) => serde_yaml_ng::from_value(m.clone())
            .map_err(|e| object_error(format!("metadata: {e}")))?,
    };
    let whose = if path.is_empty() { "pod" } else { "workload" };
    let workload_skip = opt_out(&meta, whose).map_err(|source| ManifestError::Pod {
        at: Box::new(at.clone()),
        source,
    })?;
    if let Some(reason) = workload_skip {
        pods.push(PodReport {
            at,
            outcome: Outcome::Skipped(reason),
        });
        return Ok(());
    }
    let mut template = &mut *obj;
    for (depth, key) in path.iter().enumerate() {
        template = template
            .get_mut(*key)
            .filter(|t| t.is_mapping())
            .ok_or_else(|| {
                object_error(format!(
                    "{} is missing or not a mapping",
                    path[..=depth].join(".")
                ))
            })?;
    }
    let json = serde_json::to_value(&*template)
        .map_err(|e| object_error(format!("{}: {e}", path.join("."))))?;
    match pod_patch(&json, cfg).map_err(|source| ManifestError::Pod {
        at: Box::new(at.clone()),
        source,
    })? {
        PodDecision::Skip(reason) => pods.push(PodReport {
            at,
            outcome: Outcome::Skipped(reason),
        }),
        PodDecision::Inject(ops) => {
            for op in &ops {
                yaml_patch::apply(template, op).map_err(|e| object_error(e.to_string()))?;
            }
            let completes = matches!(
                json.pointer("/spec/restartPolicy").and_then(|v| v.as_str()),
                Some("Never" | "OnFailure")
            );
            let notes = match cfg.legacy_sidecar && completes {
                true => vec![Note::RunToCompletion],
                false => vec![],
            };
            pods.push(PodReport {
                at,
                outcome: Outcome::Injected(notes),
            });
            *changed = true;
        }
    }
    Ok(())
}

/// The new text of a changed document: its separator line (or a bare `---` if content was on
/// it), its leading comments, the document, its trailing comments.
fn render(raw: &RawDocument<'_>, doc: &Yaml) -> Result<String, String> {
    let mut out = String::new();
    if let Some(sep) = raw.separator() {
        let rest = sep.trim_end().trim_start_matches('-').trim_start();
        match rest.is_empty() || rest.starts_with('#') {
            true => out.push_str(sep),
            false => out.push_str("---\n"),
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&raw.leading());
    out.push_str(&serde_yaml_ng::to_string(doc).map_err(|e| e.to_string())?);
    out.push_str(&raw.trailing());
    Ok(out)
}

#[cfg(test)]
mod tests;
