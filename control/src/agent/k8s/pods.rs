//! The kubelet's pod list (`GET /pods`: a v1 `PodList` in JSON), reduced to what attestation
//! needs, and the lookup of a process's pod and container in it. Pure.
//!
//! Container IDs are read from `status.containerStatuses`, `status.initContainerStatuses` (native
//! sidecars are init containers that keep running) and `status.ephemeralContainerStatuses`, where
//! the runtime prefixes them: `containerd://<id>`, `cri-o://<id>`, `docker://<id>`. A container
//! that has just started may not be listed yet: the caller refreshes and retries.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use super::cgroup::{ContainerId, PodCgroup, PodUid};

/// What Kubernetes says about a caller in a pod: the `k8s:` selectors match these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: String,
    /// `metadata.name`.
    pub pod_name: String,
    /// `metadata.uid`.
    pub pod_uid: PodUid,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The container's name from the pod's status; `None` for a process in the pod's own cgroup
    /// rather than a container's.
    pub container_name: Option<String>,
    /// The container's ID, from the cgroup.
    pub container_id: Option<ContainerId>,
}

/// One pod of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: PodUid,
    /// `spec.serviceAccountName`, `default` when unset.
    pub service_account: String,
    /// `spec.nodeName`.
    pub node_name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Container IDs (regular, init and ephemeral containers) and the containers' names.
    pub containers: HashMap<ContainerId, String>,
}

impl PodInfo {
    /// The facts of a process in this pod and, if given, this container.
    fn facts(&self, container: Option<(&ContainerId, &String)>) -> PodFacts {
        PodFacts {
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            pod_name: self.name.clone(),
            pod_uid: self.uid.clone(),
            labels: self.labels.clone(),
            container_name: container.map(|(_, name)| name.clone()),
            container_id: container.map(|(id, _)| id.clone()),
        }
    }
}

/// The pods of one pod list, by UID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIndex {
    pods: HashMap<PodUid, Arc<PodInfo>>,
}

/// What the pod list lacks for a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No pod with this UID.
    Pod(PodUid),
    /// The pod is listed, but no container of it has this ID.
    Container {
        /// The pod's UID.
        pod: PodUid,
        /// `namespace/name` of the pod.
        name: String,
        /// The container ID from the cgroup.
        container: ContainerId,
    },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Pod(uid) => write!(f, "pod {uid} not in the kubelet's pod list"),
            Missing::Container {
                pod,
                name,
                container,
            } => write!(
                f,
                "container {container} not in the status of pod {name} ({pod}) in the kubelet's pod list"
            ),
        }
    }
}

impl PodIndex {
    /// How many pods are listed.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod is listed.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Every listed pod.
    pub fn pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values().map(|p| p.as_ref())
    }

    /// The facts of a process placed by its cgroups in `at`.
    pub fn lookup(&self, at: &PodCgroup) -> Result<PodFacts, Missing> {
        let pod = self
            .pods
            .get(&at.pod_uid)
            .ok_or_else(|| Missing::Pod(at.pod_uid.clone()))?;
        let Some(id) = &at.container_id else {
            return Ok(pod.facts(None));
        };
        let container = pod
            .containers
            .get_key_value(id)
            .ok_or_else(|| Missing::Container {
                pod: pod.uid.clone(),
                name: format!("{}/{}", pod.namespace, pod.name),
                container: id.clone(),
            })?;
        Ok(pod.facts(Some(container)))
    }
}

#[derive(Deserialize)]
struct PodList {
    /// `null` in Go's encoding of an empty list.
    #[serde(default)]
    items: Option<Vec<Pod>>,
}

#[derive(Deserialize)]
struct Pod {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Metadata {
    name: String,
    namespace: String,
    uid: String,
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    service_account_name: String,
    /// The deprecated spelling, still filled in by the API server.
    service_account: String,
    node_name: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    container_statuses: Vec<ContainerStatus>,
    init_container_statuses: Vec<ContainerStatus>,
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ContainerStatus {
    name: String,
    #[serde(rename = "containerID")]
    container_id: String,
}

/// The runtimes' schemes in `containerID`.
const RUNTIME_SCHEMES: [&str; 3] = ["containerd://", "cri-o://", "docker://"];

/// The ID in a status's `containerID` (`containerd://<id>`); `None` when not started yet or of
/// an unknown runtime.
fn container_id(s: &str) -> Option<ContainerId> {
    RUNTIME_SCHEMES
        .iter()
        .find_map(|scheme| s.strip_prefix(scheme))
        .and_then(ContainerId::parse)
}

/// A pod-list document that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the kubelet's pod list is not a PodList: {0}")]
pub struct PodListError(String);

/// Parses the kubelet's JSON pod list. Pods without a valid UID are skipped, as are pods of
/// another node than `node` (when given); a pod with no service account has `default`.
pub fn parse(json: &[u8], node: Option<&str>) -> Result<PodIndex, PodListError> {
    let list: PodList = serde_json::from_slice(json).map_err(|e| PodListError(e.to_string()))?;
    let items = list.items.unwrap_or_default();
    let mut pods = HashMap::with_capacity(items.len());
    for pod in items {
        let Some(uid) = PodUid::parse(&pod.metadata.uid) else {
            continue;
        };
        if node.is_some_and(|n| !pod.spec.node_name.is_empty() && pod.spec.node_name != n) {
            continue;
        }
        let s = pod.status;
        let containers = s
            .container_statuses
            .into_iter()
            .chain(s.init_container_statuses)
            .chain(s.ephemeral_container_statuses)
            .filter_map(|c| Some((container_id(&c.container_id)?, c.name)))
            .collect();
        let service_account = [pod.spec.service_account_name, pod.spec.service_account]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let info = PodInfo {
            namespace: pod.metadata.namespace,
            name: pod.metadata.name,
            uid: uid.clone(),
            service_account,
            node_name: pod.spec.node_name,
            labels: pod.metadata.labels,
            containers,
        };
        pods.insert(uid, Arc::new(info));
    }
    Ok(PodIndex { pods })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_A: &str = "9a0c7e0e-5d3b-4f7a-8c1d-2b6e4f8a1c3d";
    const POD_B: &str = "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b";

    fn cid(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// A pod list as the kubelet returns it (trimmed: most fields of a real one are irrelevant
    /// and ignored).
    fn list() -> String {
        format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{}},"items":[
  {{"metadata":{{"name":"shop-7d9f","generateName":"shop-","namespace":"shop","uid":"{POD_A}",
     "labels":{{"app":"shop","pod-template-hash":"7d9f"}},"creationTimestamp":"2025-01-01T00:00:00Z"}},
   "spec":{{"serviceAccountName":"backend","serviceAccount":"backend","nodeName":"node-1",
     "containers":[{{"name":"app","image":"shop:1"}}],
     "initContainers":[{{"name":"svidcar","image":"svidcar:1","restartPolicy":"Always"}}]}},
   "status":{{"phase":"Running","podIP":"10.0.0.5",
     "containerStatuses":[{{"name":"app","ready":true,"restartCount":0,"image":"shop:1",
        "containerID":"containerd://{a}","started":true,"state":{{"running":{{}}}}}}],
     "initContainerStatuses":[{{"name":"svidcar","ready":true,"restartCount":0,
        "containerID":"cri-o://{b}","state":{{"running":{{}}}}}}]}}}},
  {{"metadata":{{"name":"static-web-node-1","namespace":"kube-system","uid":"{POD_B}"}},
   "spec":{{"nodeName":"node-1"}},
   "status":{{"phase":"Pending","containerStatuses":[{{"name":"web","containerID":""}}],
     "ephemeralContainerStatuses":[{{"name":"debug","containerID":"docker://{c}"}}]}}}},
  {{"metadata":{{"name":"elsewhere","namespace":"shop","uid":"0a0b0c0d-0000-4000-8000-000000000000"}},
   "spec":{{"nodeName":"node-2"}}}},
  {{"metadata":{{"name":"no-uid","namespace":"shop"}}}}
]}}"#,
            a = cid('a'),
            b = cid('b'),
            c = cid('c')
        )
    }

    fn at(pod: &str, container: Option<char>) -> PodCgroup {
        PodCgroup {
            pod_uid: PodUid::parse(pod).unwrap(),
            container_id: container.map(|c| ContainerId::parse(&cid(c)).unwrap()),
        }
    }

    #[test]
    fn containers_init_containers_and_ephemeral_ones_are_found() {
        let index = parse(list().as_bytes(), None).unwrap();
        assert_eq!(index.len(), 3, "the pod without a UID is skipped");
        let app = index.lookup(&at(POD_A, Some('a'))).unwrap();
        assert_eq!(
            (app.namespace.as_str(), app.service_account.as_str()),
            ("shop", "backend")
        );
        assert_eq!(app.pod_name, "shop-7d9f");
        assert_eq!(app.container_name.as_deref(), Some("app"));
        assert_eq!(app.labels.get("app").map(String::as_str), Some("shop"));
        let sidecar = index.lookup(&at(POD_A, Some('b'))).unwrap();
        assert_eq!(sidecar.container_name.as_deref(), Some("svidcar"));
        let debug = index.lookup(&at(POD_B, Some('c'))).unwrap();
        assert_eq!(debug.container_name.as_deref(), Some("debug"));
        assert_eq!(debug.service_account, "default");
        let pod_level = index.lookup(&at(POD_B, None)).unwrap();
        assert_eq!(pod_level.container_name, None);
    }

    #[test]
    fn what_is_missing_is_named() {
        let index = parse(list().as_bytes(), None).unwrap();
        let other = "00000000-1111-4222-8333-444444444444";
        let e = index.lookup(&at(other, Some('a'))).unwrap_err();
        assert_eq!(e, Missing::Pod(PodUid::parse(other).unwrap()));
        assert_eq!(
            e.to_string(),
            format!("pod {other} not in the kubelet's pod list")
        );
        let e = index.lookup(&at(POD_A, Some('d'))).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "container {} not in the status of pod shop/shop-7d9f ({POD_A}) in the kubelet's pod list",
                cid('d')
            )
        );
    }

    #[test]
    fn pods_of_other_nodes_are_ignored_when_the_node_is_known() {
        let index = parse(list().as_bytes(), Some("node-1")).unwrap();
        assert_eq!(index.len(), 2);
        assert!(index.pods().all(|p| p.node_name == "node-1"));
    }

    #[test]
    fn bad_documents() {
        assert!(parse(b"", None).is_err());
        assert!(parse(b"\"x\"", None).is_err());
        assert!(parse(br#"{"items": {}}"#, None).is_err());
        assert!(parse(br#"{"items": [{"metadata": {"uid": 5}}]}"#, None).is_err());
        assert!(parse(br#"{"kind":"PodList","items":null}"#, None)
            .unwrap()
            .is_empty());
        assert!(parse(br#"{"kind":"PodList"}"#, None).unwrap().is_empty());
        assert!(container_id(&format!("rkt://{}", cid('a'))).is_none());
        assert!(container_id("containerd://short").is_none());
    }
}
