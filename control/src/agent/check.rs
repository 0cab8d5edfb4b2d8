//! `svidcar agent check`: loads the agent's configuration, looks at its CA directory and reads
//! its registration file exactly as a start would, without starting anything (no socket, no
//! listener, no CA created, nothing written), and lists every problem found.

use std::fmt;

use svidcar_identity::config_file::{self, ConfigError};
use svidcar_identity::TrustDomain;

use super::{read_registration, AgentConfig, AgentError, AgentFlags};
use crate::authority::dir;

/// What `svidcar agent check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Every problem, each naming the file or setting and what to do; empty when all is well.
    pub problems: Vec<String>,
    /// What was checked, for the all-is-well message.
    pub checked: Vec<String>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok() {
            writeln!(f, "ok")?;
            for c in &self.checked {
                writeln!(f, "  {c}")?;
            }
            return Ok(());
        }
        let n = self.problems.len();
        writeln!(f, "{n} problem{}:", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            // A problem spanning several lines (a registration file's) stays indented.
            writeln!(f, "  - {}", p.replace('\n', "\n    "))?;
        }
        Ok(())
    }
}

/// Checks what `flags` (and the `--config` file they name) configure.
pub fn check(flags: &AgentFlags) -> CheckReport {
    let mut report = CheckReport::default();
    let config: AgentConfig = match config_file::load(
        flags.config.as_deref(),
        |c| flags.apply(c),
        |_: &AgentConfig| Ok::<(), (&str, String)>(()),
    ) {
        Ok(c) => c,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    let origin = config_file::origin(flags.config.as_deref());
    for (field, message) in config.problems() {
        let e = ConfigError::Invalid {
            origin: origin.clone(),
            field: field.into(),
            message,
        };
        report.problems.push(e.to_string());
    }
    if let Some(c) = &flags.config {
        report
            .checked
            .push(format!("configuration: {}", c.display()));
    }
    let td = trust_domain(&config, &mut report);
    registration(&config, td.as_ref(), &mut report);
    if config.kubernetes.enabled {
        match config.kubernetes.settings() {
            Ok(_) => report
                .checked
                .push(format!("kubelet: {}", config.kubernetes.kubelet_url)),
            Err(e) => report.problems.push(AgentError::from(e).to_string()),
        }
    }
    report
}

/// The trust domain the agent would serve, checking the CA directory (if any) on the way.
fn trust_domain(config: &AgentConfig, report: &mut CheckReport) -> Option<TrustDomain> {
    let Some(ca_dir) = &config.ca_dir else {
        return config.trust_domain.clone();
    };
    match super::trust_domain_before_start(config) {
        Ok(Some(td)) => {
            let held = matches!(dir::inspect(ca_dir), Ok(Some(_)));
            report.checked.push(format!(
                "CA directory {}: {}",
                ca_dir.display(),
                if held {
                    format!("holds {td}'s CA")
                } else {
                    format!("empty: a CA for {td} is created on first start")
                }
            ));
            Some(td)
        }
        Ok(None) => {
            report.problems.push(format!(
                "{}: the CA directory holds no CA yet and trust_domain (--trust-domain) is not set: set it, so that the first start can create one",
                ca_dir.display()
            ));
            None
        }
        Err(e) => {
            report.problems.push(e.to_string());
            // The entries can still be checked against the trust domain given.
            config.trust_domain.clone()
        }
    }
}

/// Reads the registration file (and the federated bundles it names) as a start would.
fn registration(config: &AgentConfig, td: Option<&TrustDomain>, report: &mut CheckReport) {
    if config.registration.as_os_str().is_empty() {
        return; // reported by the settings' check
    }
    let Some(td) = td else {
        report.problems.push(format!(
            "{}: not checked: the trust domain is unknown (see above)",
            config.registration.display()
        ));
        return;
    };
    match read_registration(&config.registration, td) {
        Ok((_, reg)) => report.checked.push(format!(
            "registration {}: {} entries, {} federated trust domains, trust domain {td}",
            config.registration.display(),
            reg.entries.len(),
            reg.federated.len()
        )),
        Err(AgentError::Registration(e)) => {
            let path = e.path.display();
            let each = e.problems.iter().map(|p| format!("{path}: {p}"));
            report.problems.extend(each);
        }
        Err(e) => report.problems.push(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn flags(dir: &Path, config: &str) -> AgentFlags {
        let path = dir.join("agent.yaml");
        std::fs::write(&path, config).unwrap();
        AgentFlags {
            config: Some(path),
            ..Default::default()
        }
    }

    #[test]
    fn every_problem_is_listed_and_nothing_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        std::fs::create_dir(&ca).unwrap();
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o755)).unwrap();
        let reg = dir.path().join("reg.yaml");
        std::fs::write(
            &reg,
            "entries:\n  - { spiffe_id: spiffe://example.org/a, selectors: [unix:uid:x] }\n  - { spiffe_id: spiffe://other.org/b, selectors: [unix:uid:1] }\n",
        )
        .unwrap();
        let socket = dir.path().join("agent.sock");
        let f = flags(
            dir.path(),
            &format!(
                "ca_dir: {}\ntrust_domain: example.org\nregistration: {}\nsocket: {}\nsvid_ttl: 1s\nreload_interval: 0s\n",
                ca.display(),
                reg.display(),
                socket.display()
            ),
        );
        let report = check(&f);
        let text = report.to_string();
        assert!(!report.ok());
        assert!(text.starts_with("5 problems:\n"), "{text}");
        for want in [
            "agent.yaml (with flags/environment): svid_ttl: must be at least 2s",
            "reload_interval: must be greater than zero",
            "CA directory: open to group or others (mode 0755)",
            "entries[0] (spiffe://example.org/a): selectors[0]",
            "entries[1] (spiffe://other.org/b): spiffe_id: not in trust domain example.org",
        ] {
            assert!(text.contains(want), "{want}:\n{text}");
        }
        assert!(!socket.exists());
        assert_eq!(std::fs::read_dir(&ca).unwrap().count(), 0);

        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(
            &reg,
            "entries:\n  - { spiffe_id: spiffe://example.org/a, selectors: [unix:uid:1] }\n",
        )
        .unwrap();
        let f = flags(
            dir.path(),
            &format!(
                "ca_dir: {}\ntrust_domain: example.org\nregistration: {}\nsocket: {}\n",
                ca.display(),
                reg.display(),
                socket.display()
            ),
        );
        let report = check(&f);
        assert!(report.ok(), "{report}");
        let text = report.to_string();
        assert!(
            text.contains("a CA for example.org is created on first start"),
            "{text}"
        );
        assert!(text.contains("1 entries"), "{text}");
        assert!(!socket.exists());
        assert_eq!(std::fs::read_dir(&ca).unwrap().count(), 0);
    }

    #[test]
    fn an_unreadable_config_file_is_the_one_problem() {
        let f = AgentFlags {
            config: Some("/nonexistent/agent.yaml".into()),
            ..Default::default()
        };
        let report = check(&f);
        assert_eq!(report.problems.len(), 1, "{report}");
        assert!(
            report.problems[0].contains("/nonexistent/agent.yaml"),
            "{report}"
        );
    }
}
