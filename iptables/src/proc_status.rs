//! What `/proc/self/status` says about us: effective ids and whether we hold CAP_NET_ADMIN.
//! Used to explain failures precisely and to make sure the probe is not the proxy.

/// Bit of CAP_NET_ADMIN in the capability masks (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// The parts of `/proc/self/status` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStatus {
    pub euid: u32,
    pub egid: u32,
    pub net_admin: bool,
}

impl ProcStatus {
    /// Reads the current process's status; `None` if `/proc` is unavailable or unreadable.
    pub(crate) fn current() -> Option<ProcStatus> {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| ProcStatus::parse(&s))
    }

    /// Parses the `Uid:`, `Gid:` (real, effective, ...) and `CapEff:` (hex mask) lines.
    pub(crate) fn parse(status: &str) -> Option<ProcStatus> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::split_whitespace)
        };
        let euid = field("Uid")?.nth(1)?.parse().ok()?;
        let egid = field("Gid")?.nth(1)?.parse().ok()?;
        let caps = u64::from_str_radix(field("CapEff")?.next()?, 16).ok()?;
        Some(ProcStatus {
            euid,
            egid,
            net_admin: caps & (1 << CAP_NET_ADMIN) != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_and_net_admin() {
        let s = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t100\t7\t7\t7\nCapEff:\t0000000000001000\n";
        assert_eq!(
            ProcStatus::parse(s),
            Some(ProcStatus {
                euid: 0,
                egid: 7,
                net_admin: true
            })
        );
        let s = s.replace("0000000000001000", "00000000a80425fb");
        assert_eq!(ProcStatus::parse(&s).map(|p| p.net_admin), Some(false));
        assert_eq!(ProcStatus::parse("Uid:\tx\n"), None);
    }
}
