//! Which pod and container a process belongs to, from the text of `/proc/<pid>/cgroup`. Pure.
//!
//! The kubelet puts every pod in a cgroup named after its UID, and the container runtime puts
//! each container in a child of it named after the container ID. The names depend on the
//! kubelet's cgroup driver and on the runtime:
//!
//! | driver | pod cgroup | container cgroup |
//! |---|---|---|
//! | cgroupfs | `/kubepods[/burstable\|/besteffort]/pod<uid>` | `<id>` (containerd, Docker), `crio-<id>` (CRI-O) |
//! | systemd | `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid, _ for ->.slice` | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` |
//!
//! The pod cgroup must sit under a `kubepods` one (named so by the kubelet; a custom cgroup root
//! keeps that name below it). A prefix before it is allowed (a kind node's `/docker/<node>/…`, a custom cgroup
//! root, `/../..` when the reader is in another cgroup namespace). Everything below the container
//! cgroup is ignored: a container may be allowed to create cgroups under its own, so only the
//! first pod cgroup of a path and the cgroup right under it are believed.
//!
//! Each line is `<hierarchy id>:<controllers>:<path>`; with cgroup v1 there is a line per
//! hierarchy, with v2 one line (`0::<path>`). Lines outside any pod are ignored; lines naming
//! different pods or containers make the whole file unusable.

use std::fmt;

/// A pod's UID as the kubelet's pod list spells it: a UUID with dashes, or 32 hex digits for
/// static pods (a hash of their manifest).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodUid(String);

impl PodUid {
    /// Accepts the pod list's form (`8-4-4-4-12` hex digits, or 32 hex digits).
    pub fn parse(s: &str) -> Option<Self> {
        let hex = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit())
        };
        let dashed = {
            let parts: Vec<&str> = s.split('-').collect();
            parts.len() == 5
                && parts
                    .iter()
                    .zip([8, 4, 4, 4, 12])
                    .all(|(p, len)| hex(p, len))
        };
        (dashed || hex(s, 32)).then(|| PodUid(s.to_owned()))
    }

    /// The UID.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A container ID as runtimes make them: 64 hex digits, without the runtime's `containerd://`
/// prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// Accepts exactly 64 hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| ContainerId(s.to_owned()))
    }

    /// The ID.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a process is: its pod and, unless it sits in the pod's own cgroup, its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod.
    pub pod_uid: PodUid,
    /// The container, if the process is in one.
    pub container_id: Option<ContainerId>,
}

/// A cgroup file that names a pod but cannot be trusted to say which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    /// Two hierarchies put the process in different pods.
    #[error("the process's cgroups name two pods, {0} and {1}")]
    TwoPods(PodUid, PodUid),
    /// Two hierarchies put the process in different containers.
    #[error("the process's cgroups name two containers, {0} and {1}")]
    TwoContainers(ContainerId, ContainerId),
    /// The cgroup under the pod's is not named like any container runtime's.
    #[error("cgroup {segment:?} under pod {pod} is not a container cgroup (expected <64 hex>, crio-<id>, or cri-containerd-/crio-/docker-<id>.scope)")]
    NotAContainer {
        /// The pod.
        pod: PodUid,
        /// The cgroup name found under it.
        segment: String,
    },
}

/// The pod UID a cgroup name stands for, if it is a pod's cgroup: `pod<uid>` under `kubepods`,
/// `burstable` or `besteffort` (cgroupfs), or `<…kubepods…>-pod<uid with _>.slice` (systemd).
fn pod_of(parent: &str, segment: &str) -> Option<PodUid> {
    if let Some(uid) = segment.strip_prefix("pod") {
        let under_kubepods = ["kubepods", "burstable", "besteffort"].contains(&parent);
        return PodUid::parse(uid).filter(|_| under_kubepods);
    }
    let slice = segment.strip_suffix(".slice")?;
    let (parent_slice, last) = slice.rsplit_once('-')?;
    let uid = last.strip_prefix("pod")?;
    if !parent_slice.contains("kubepods") || uid.contains('-') {
        return None;
    }
    PodUid::parse(&uid.replace('_', "-"))
}

/// The runtimes' prefixes of container cgroups.
const RUNTIME_PREFIXES: [&str; 3] = ["cri-containerd", "crio", "docker"];

/// The container ID a cgroup name (right under a pod's) stands for.
fn container_of(segment: &str) -> Option<ContainerId> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    if let Some(id) = ContainerId::parse(name) {
        return (name.len() == segment.len()).then_some(id);
    }
    let (prefix, id) = name.rsplit_once('-')?;
    RUNTIME_PREFIXES
        .contains(&prefix)
        .then(|| ContainerId::parse(id))
        .flatten()
}

/// The pod and container one cgroup path names, if any.
fn of_path(path: &str) -> Result<Option<PodCgroup>, CgroupError> {
    let mut segments = path.split('/');
    let mut parent = "";
    let Some(pod_uid) = segments.by_ref().find_map(|segment| {
        let found = pod_of(parent, segment);
        parent = segment;
        found
    }) else {
        return Ok(None);
    };
    let container_id = match segments.next().filter(|s| !s.is_empty()) {
        None => None,
        Some(segment) => Some(
            container_of(segment).ok_or_else(|| CgroupError::NotAContainer {
                pod: pod_uid.clone(),
                segment: segment.to_owned(),
            })?,
        ),
    };
    Ok(Some(PodCgroup {
        pod_uid,
        container_id,
    }))
}

/// The pod and container the text of `/proc/<pid>/cgroup` places the process in; `None` when no
/// line names a pod (the process is not in a Kubernetes pod).
pub fn parse(text: &str) -> Result<Option<PodCgroup>, CgroupError> {
    let mut found: Option<PodCgroup> = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Some(here) = of_path(path)? else {
            continue;
        };
        let Some(seen) = &mut found else {
            found = Some(here);
            continue;
        };
        if seen.pod_uid != here.pod_uid {
            return Err(CgroupError::TwoPods(seen.pod_uid.clone(), here.pod_uid));
        }
        match (&seen.container_id, here.container_id) {
            (Some(a), Some(b)) if *a != b => return Err(CgroupError::TwoContainers(a.clone(), b)),
            (None, Some(b)) => seen.container_id = Some(b),
            _ => {}
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const UID_SYSTEMD: &str = "2c48913c_b29f_11e7_9350_020968147796";
    const STATIC_UID: &str = "5f1cbe4a3e29c1e0f4b9c2d8e7a6b5c4";

    fn cid(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn found(uid: &str, container: Option<&str>) -> Option<PodCgroup> {
        Some(PodCgroup {
            pod_uid: PodUid::parse(uid).unwrap(),
            container_id: container.map(|c| ContainerId::parse(c).unwrap()),
        })
    }

    #[test]
    fn kubelet_and_runtime_path_formats() {
        let a = cid('a');
        let cases: Vec<(String, Option<PodCgroup>)> = vec![
            // cgroupfs driver, v1: containerd / Docker, each QoS class.
            (format!("4:memory:/kubepods/burstable/pod{UID}/{a}"), found(UID, Some(&a))),
            (format!("4:memory:/kubepods/besteffort/pod{UID}/{a}"), found(UID, Some(&a))),
            (format!("4:memory:/kubepods/pod{UID}/{a}"), found(UID, Some(&a))),
            // cgroupfs driver, CRI-O.
            (format!("7:pids:/kubepods/burstable/pod{UID}/crio-{a}"), found(UID, Some(&a))),
            // systemd driver, v2: containerd, CRI-O, Docker; guaranteed pods have no QoS slice.
            (
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{a}.scope"),
                found(UID, Some(&a)),
            ),
            (
                format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-{a}.scope"),
                found(UID, Some(&a)),
            ),
            (
                format!("1:name=systemd:/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/docker-{a}.scope"),
                found(UID, Some(&a)),
            ),
            // A kind node (Docker in Docker) and a reader in another cgroup namespace.
            (
                format!("11:cpu,cpuacct:/docker/{}/kubepods/besteffort/pod{UID}/{a}", cid('9')),
                found(UID, Some(&a)),
            ),
            (
                format!("0::/../../kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{a}.scope"),
                found(UID, Some(&a)),
            ),
            // A static pod's UID; the pod's own cgroup (no container).
            (format!("3:cpuset:/kubepods/besteffort/pod{STATIC_UID}/{a}"), found(STATIC_UID, Some(&a))),
            (format!("0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice"), found(UID, None)),
            // Cgroups created by the container under its own are ignored.
            (
                format!("0::/kubepods/pod{UID}/{a}/pod{STATIC_UID}/{}", cid('b')),
                found(UID, Some(&a)),
            ),
            // Not in a pod.
            ("0::/user.slice/user-1000.slice/session-2.scope".into(), None),
            ("4:memory:/process_api/d88183b4aeb1d111ceb9cce846918c2b".into(), None),
            (format!("0::/system.slice/docker-{a}.scope"), None),
            ("0::/".into(), None),
            ("".into(), None),
            ("garbage without colons\n::\n".into(), None),
            // Not a pod UID.
            (format!("0::/kubepods/podnot-a-uid/{a}"), None),
            (format!("0::/kubepods.slice/kubepods-pod{UID}.slice/cri-containerd-{a}.scope"), None),
            (format!("0::/kubepods.slice/-pod{UID_SYSTEMD}.slice/{a}"), None),
            // A pod-like cgroup outside the kubelet's hierarchy (another container's).
            (format!("0::/system.slice/docker-{a}.scope/pod{UID}/{a}"), None),
            (format!("0::/system.slice/other-pod{UID_SYSTEMD}.slice/{a}"), None),
        ];
        for (text, want) in cases {
            assert_eq!(parse(&text), Ok(want), "{text}");
        }
    }

    #[test]
    fn a_v1_file_with_every_hierarchy() {
        let a = cid('e');
        let text = format!(
            "12:hugetlb:/kubepods/besteffort/pod{UID}/{a}\n\
             11:memory:/kubepods/besteffort/pod{UID}/{a}\n\
             10:rdma:/\n\
             9:pids:/kubepods/besteffort/pod{UID}\n\
             1:name=systemd:/kubepods/besteffort/pod{UID}/{a}\n\
             0::/\n"
        );
        assert_eq!(parse(&text), Ok(found(UID, Some(&a))));
    }

    #[test]
    fn disagreeing_hierarchies_are_refused() {
        let text = format!(
            "8:pids:/kubepods/pod{UID}/{}\n0::/kubepods/pod{UID}/{}\n",
            cid('a'),
            cid('b')
        );
        assert!(matches!(parse(&text), Err(CgroupError::TwoContainers(..))));
        let text = format!(
            "8:pids:/kubepods/pod{UID}/{}\n0::/kubepods/pod{STATIC_UID}/{}\n",
            cid('a'),
            cid('a')
        );
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains(STATIC_UID), "{e}");
    }

    #[test]
    fn unknown_container_cgroups_are_refused() {
        for segment in [
            format!("crio-conmon-{}.scope", cid('a')),
            format!("podman-{}.scope", cid('a')),
            format!("{}.scope", cid('a')),
            "abc".to_string(),
            format!("cri-containerd-{}.scope", "a".repeat(63)),
        ] {
            let text = format!("0::/kubepods/burstable/pod{UID}/{segment}");
            let e = parse(&text).unwrap_err();
            assert_eq!(
                e,
                CgroupError::NotAContainer {
                    pod: PodUid::parse(UID).unwrap(),
                    segment: segment.clone()
                }
            );
            assert!(e.to_string().contains("not a container cgroup"), "{e}");
        }
    }

    #[test]
    fn ids() {
        assert!(PodUid::parse(UID).is_some());
        assert!(PodUid::parse(STATIC_UID).is_some());
        assert!(PodUid::parse(&UID[1..]).is_none());
        assert!(PodUid::parse("2c48913c-b29f-11e7-9350-02096814779g").is_none());
        assert!(PodUid::parse("").is_none());
        assert!(ContainerId::parse(&cid('f')).is_some());
        assert!(ContainerId::parse(&"g".repeat(64)).is_none());
        assert!(ContainerId::parse(&cid('f')[1..]).is_none());
    }
}
