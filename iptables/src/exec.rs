//! Running external commands with a deadline: the only place this crate spawns processes.

use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

/// How long one iptables command may take. Restores wait up to 5 s for the xtables lock
/// (`-w 5`); the rest is headroom for large rule sets.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished command printed.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Why a command produced no [`Output`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    /// The program is not on `PATH`.
    #[error("not found")]
    NotFound,
    /// It ran past the deadline and was killed.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// Spawning or talking to it failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Runs commands; the seam that lets `run_init` be tested without root.
pub(crate) trait Runner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, ExecError>;
}

/// Runs real processes, each bounded by a timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct System {
    pub timeout: Duration,
}

impl Default for System {
    fn default() -> Self {
        System {
            timeout: COMMAND_TIMEOUT,
        }
    }
}

impl Runner for System {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, ExecError> {
        tracing::debug!(program, ?args, "running");
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => ExecError::NotFound,
                _ => ExecError::Io(e),
            })?;
        // Feed and drain on threads so a full pipe can never stall the deadline below.
        let writer = child.stdin.take().map(|mut pipe| {
            let input = stdin.unwrap_or_default().to_string();
            thread::spawn(move || pipe.write_all(input.as_bytes()))
        });
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait(&mut child, self.timeout)?;
        if let Some(w) = writer {
            // A program that exits without reading its input is judged by its exit status.
            let _ = w.join();
        }
        Ok(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Polls until the child exits or `timeout` worth of polling has passed. Counting sleeps
/// (rather than reading a clock) can only overshoot the deadline, by the polling overhead.
fn wait(child: &mut Child, timeout: Duration) -> Result<ExitStatus, ExecError> {
    let mut waited = Duration::ZERO;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if waited >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ExecError::TimedOut(timeout));
        }
        thread::sleep(POLL);
        waited += POLL;
    }
}

const POLL: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_with_stdin_and_reports_missing_programs() {
        let sys = System::default();
        let out = sys.run("cat", &[], Some("hello\n")).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, "hello\n");
        assert!(matches!(
            sys.run("/nonexistent/svidcar-no-such-program", &[], None),
            Err(ExecError::NotFound)
        ));
    }

    #[test]
    fn kills_at_the_deadline() {
        let sys = System {
            timeout: Duration::from_millis(100),
        };
        // TimedOut is only returned after the child was killed.
        assert!(matches!(
            sys.run("sleep", &["5"], None),
            Err(ExecError::TimedOut(_))
        ));
    }
}
