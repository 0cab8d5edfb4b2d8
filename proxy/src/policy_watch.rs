//! Static policy from a local directory: loaded at start and whenever a file changes. A bad edit
//! is reported and the last valid set stays in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::authz::Authz;
use svidcar_policy::{dir_version, load_dir, PolicySet};

/// Polls `dir` every `interval` until `cancel` fires.
pub(crate) async fn watch_dir(
    dir: PathBuf,
    authz: Arc<Authz>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut seen: Option<String> = None;
    loop {
        match dir_version(&dir) {
            Some(version) if seen.as_ref() != Some(&version) => {
                match load_dir(&dir) {
                    Ok(policies) => {
                        authz.install(PolicySet {
                            version: version.clone(),
                            policies,
                        });
                    }
                    Err(errors) => {
                        for e in &errors {
                            tracing::warn!(error = %e, in_force = %svidcar_identity::OrNone(authz.version()), "policy update rejected; the last valid policy stays in force");
                        }
                    }
                }
                seen = Some(version);
            }
            Some(_) => {}
            None => {
                if seen.is_some() {
                    tracing::warn!(dir = %dir.display(), "cannot read policy directory; the last valid policy stays in force");
                    seen = None;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
