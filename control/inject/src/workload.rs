//! Where a Kubernetes object keeps its pod: the object itself (Pod), a template under `spec`
//! (workloads), or nowhere (everything else, never touched).

/// How an object holds a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A Pod: the object is the pod.
    Pod,
    /// A workload: the pod template is at this path of keys.
    Template(&'static [&'static str]),
    /// A `kind: List`: each of `items` is an object.
    List,
    /// Anything else (Services, ConfigMaps, CRDs, custom resources…).
    Other,
}

const SPEC_TEMPLATE: &[&str] = &["spec", "template"];
const JOB_TEMPLATE: &[&str] = &["spec", "jobTemplate", "spec", "template"];

/// The shape of an object of `apiVersion` and `kind`. Kinds are matched with their API group,
/// so a custom resource that happens to be called `Deployment` is left alone.
pub(crate) fn shape(api_version: &str, kind: &str) -> Shape {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("", "Pod") => Shape::Pod,
        ("", "ReplicationController") => Shape::Template(SPEC_TEMPLATE),
        ("", "PodTemplate") => Shape::Template(&["template"]),
        ("", "List") => Shape::List,
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Shape::Template(SPEC_TEMPLATE)
        }
        ("batch", "Job") => Shape::Template(SPEC_TEMPLATE),
        ("batch", "CronJob") => Shape::Template(JOB_TEMPLATE),
        _ => Shape::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_group() {
        assert_eq!(shape("v1", "Pod"), Shape::Pod);
        assert_eq!(
            shape("apps/v1", "Deployment"),
            Shape::Template(SPEC_TEMPLATE)
        );
        assert_eq!(
            shape("extensions/v1beta1", "DaemonSet"),
            Shape::Template(SPEC_TEMPLATE)
        );
        assert_eq!(
            shape("batch/v1beta1", "CronJob"),
            Shape::Template(JOB_TEMPLATE)
        );
        assert_eq!(shape("batch/v1", "Job"), Shape::Template(SPEC_TEMPLATE));
        assert_eq!(
            shape("v1", "ReplicationController"),
            Shape::Template(SPEC_TEMPLATE)
        );
        assert_eq!(shape("v1", "List"), Shape::List);
        assert_eq!(shape("example.com/v1", "Deployment"), Shape::Other);
        assert_eq!(
            shape("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            Shape::Other
        );
        assert_eq!(shape("v1", "Service"), Shape::Other);
        assert_eq!(shape("apps/v1", "Pod"), Shape::Other);
    }
}
