//! The `runtime` section: the threads the proxy's async runtime runs on (Istio's
//! `concurrency`, Linkerd's proxy `cores`).

use serde::{Deserialize, Serialize};

/// The worker threads of `svidcar run`. Read before the runtime is built, so it takes effect
/// only at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads that run connections (accepts, TLS handshakes, copying, policy, admin). `0`
    /// means one per CPU the process may use (its affinity mask and cgroup CPU quota, as
    /// `std::thread::available_parallelism` reports). Default `2`: a sidecar shares its pod
    /// with the app, and two threads keep one slow handshake from stalling every other
    /// connection while costing about 0.1 MiB more than one (see docs/memory.md). Flag
    /// `--worker-threads`, env `SVIDCAR_WORKER_THREADS`.
    pub worker_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { worker_threads: 2 }
    }
}

impl RuntimeConfig {
    /// The number of worker threads to start: `worker_threads`, or with `0` one per usable
    /// CPU (at least one).
    pub fn threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_one_per_cpu() {
        let per_cpu = RuntimeConfig { worker_threads: 0 }.threads();
        assert!(per_cpu >= 1);
        assert_eq!(
            per_cpu,
            std::thread::available_parallelism().map_or(1, usize::from)
        );
        assert_eq!(RuntimeConfig { worker_threads: 3 }.threads(), 3);
        assert_eq!(RuntimeConfig::default().threads(), 2);
    }

    #[test]
    fn yaml_form() {
        let c: RuntimeConfig = serde_yaml_ng::from_str("worker_threads: 4").unwrap();
        assert_eq!(c.worker_threads, 4);
        let c: RuntimeConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(c, RuntimeConfig::default());
        assert!(serde_yaml_ng::from_str::<RuntimeConfig>("threads: 4").is_err());
    }
}
