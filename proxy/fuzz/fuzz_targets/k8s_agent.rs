//! What the agent reads about a caller's pod, both untrusted: `/proc/<pid>/cgroup` text and the
//! kubelet's pod list. Never panics; whatever the cgroup parser finds is a pod UID and container
//! ID of the documented forms, and a lookup in any parsed pod list answers.

#![no_main]

use libfuzzer_sys::fuzz_target;
use svidcar_control::agent::k8s::{cgroup, pods, ContainerId, PodUid};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(Some(found)) = cgroup::parse(&text) {
        let uid = found.pod_uid.as_str();
        assert_eq!(PodUid::parse(uid).as_ref(), Some(&found.pod_uid));
        if let Some(id) = &found.container_id {
            assert_eq!(ContainerId::parse(id.as_str()).as_ref(), Some(id));
        }
    }
    if let Ok(index) = pods::parse(data, None) {
        let probe = cgroup::PodCgroup {
            pod_uid: PodUid::parse("00000000-0000-4000-8000-000000000000").expect("valid UID"),
            container_id: None,
        };
        let _ = index.lookup(&probe);
        for pod in index.pods() {
            let at = cgroup::PodCgroup {
                pod_uid: pod.uid.clone(),
                container_id: pod.containers.keys().next().cloned(),
            };
            assert!(index.lookup(&at).is_ok(), "a listed pod is found");
        }
    }
});
