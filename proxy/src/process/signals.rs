//! The shutdown signals a process waits for.

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::ProcessError;

/// SIGTERM and SIGINT, installed once so that a second one is seen too (and never falls back
/// to the default action, which would end the process without a drain).
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs both handlers (inside a tokio runtime).
    pub fn install() -> Result<Self, ProcessError> {
        let install = |kind, name| {
            signal(kind).map_err(|source| ProcessError::Signal {
                signal: name,
                source,
            })
        };
        Ok(Self {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// The next SIGTERM or SIGINT, by name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
