//! The default identity of a pod, from a template of the SPIFFE ID's path such as
//! `ns/{namespace}/sa/{service_account}` (the form Kubernetes meshes use). Pure.

use std::fmt;

use svidcar_identity::{SpiffeId, TrustDomain};

use super::pods::PodFacts;

/// The template every pod's default SPIFFE ID path is made from, unless configured otherwise.
pub const DEFAULT_TEMPLATE: &str = "ns/{namespace}/sa/{service_account}";

/// What a template may name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Namespace,
    ServiceAccount,
}

/// A parsed template of a SPIFFE ID path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTemplate {
    source: String,
    parts: Vec<Part>,
}

/// A template that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{template:?}: {message}")]
pub struct TemplateError {
    template: String,
    message: String,
}

impl fmt::Display for IdTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl IdTemplate {
    /// Parses `{namespace}` and `{service_account}` placeholders in a path (a leading `/` is
    /// optional), then checks that a sample pod's path is a valid SPIFFE ID path.
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        let err = |message: String| TemplateError {
            template: s.to_owned(),
            message,
        };
        let mut parts = Vec::new();
        let mut rest = s.strip_prefix('/').unwrap_or(s);
        while !rest.is_empty() {
            let Some(open) = rest.find(['{', '}']) else {
                parts.push(Part::Text(rest.to_owned()));
                break;
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            rest = &rest[open..];
            let close = rest
                .strip_prefix('{')
                .and_then(|r| r.find('}'))
                .ok_or_else(|| err("unbalanced { or }".into()))?;
            let name = &rest[1..close + 1];
            parts.push(match name {
                "namespace" => Part::Namespace,
                "service_account" => Part::ServiceAccount,
                _ => {
                    return Err(err(format!(
                        "unknown placeholder {{{name}}} (use {{namespace}} and {{service_account}})"
                    )))
                }
            });
            rest = &rest[close + 2..];
        }
        let template = IdTemplate {
            source: s.to_owned(),
            parts,
        };
        let sample = TrustDomain::parse("example.org").map_err(|e| err(e.to_string()))?;
        template
            .render_with(&sample, "default", "default")
            .map_err(|e| {
                err(format!(
                "with namespace and service account \"default\" it gives an invalid SPIFFE ID: {e}"
            ))
            })?;
        Ok(template)
    }

    /// The SPIFFE ID of a pod in `td`.
    pub fn render(
        &self,
        td: &TrustDomain,
        pod: &PodFacts,
    ) -> Result<SpiffeId, svidcar_identity::IdError> {
        self.render_with(td, &pod.namespace, &pod.service_account)
    }

    fn render_with(
        &self,
        td: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, svidcar_identity::IdError> {
        let mut path = String::from("/");
        for part in &self.parts {
            path.push_str(match part {
                Part::Text(t) => t,
                Part::Namespace => namespace,
                Part::ServiceAccount => service_account,
            });
        }
        SpiffeId::from_parts(td, &path)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::agent::k8s::cgroup::PodUid;

    fn pod(ns: &str, sa: &str) -> PodFacts {
        PodFacts {
            namespace: ns.into(),
            service_account: sa.into(),
            pod_name: "p".into(),
            pod_uid: PodUid::parse("9a0c7e0e-5d3b-4f7a-8c1d-2b6e4f8a1c3d").unwrap(),
            labels: BTreeMap::new(),
            container_name: None,
            container_id: None,
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::parse("cluster.local").unwrap()
    }

    #[test]
    fn the_default_template_gives_the_kubernetes_form() {
        let t = IdTemplate::parse(DEFAULT_TEMPLATE).unwrap();
        let id = t.render(&td(), &pod("shop", "backend")).unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/backend");
        assert_eq!(t.to_string(), DEFAULT_TEMPLATE);
    }

    #[test]
    fn other_templates() {
        for (template, want) in [
            (
                "/ns/{namespace}/sa/{service_account}",
                "spiffe://cluster.local/ns/shop/sa/backend",
            ),
            (
                "k8s/{namespace}-{service_account}",
                "spiffe://cluster.local/k8s/shop-backend",
            ),
            (
                "workload/{service_account}",
                "spiffe://cluster.local/workload/backend",
            ),
            ("static", "spiffe://cluster.local/static"),
        ] {
            let t = IdTemplate::parse(template).unwrap();
            assert_eq!(
                t.render(&td(), &pod("shop", "backend")).unwrap().as_str(),
                want
            );
        }
    }

    #[test]
    fn bad_templates_say_why() {
        for (template, why) in [
            ("ns/{namespace}/sa/{sa}", "unknown placeholder {sa}"),
            ("ns/{namespace", "unbalanced"),
            ("ns/namespace}", "unbalanced"),
            ("ns/{}", "unknown placeholder {}"),
            ("ns//{namespace}", "invalid SPIFFE ID"),
            ("ns/{namespace}/", "invalid SPIFFE ID"),
            ("ns/{namespace}?x", "invalid SPIFFE ID"),
            ("", "invalid SPIFFE ID"),
        ] {
            let e = IdTemplate::parse(template).unwrap_err().to_string();
            assert!(e.contains(why), "{template}: {e}");
        }
    }

    #[test]
    fn a_value_that_breaks_the_path_is_an_error_not_a_panic() {
        let t = IdTemplate::parse(DEFAULT_TEMPLATE).unwrap();
        assert!(t.render(&td(), &pod("..", "x")).is_err());
        assert!(t.render(&td(), &pod("", "x")).is_err());
    }
}
