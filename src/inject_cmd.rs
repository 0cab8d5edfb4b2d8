//! `svidcar inject`: add the svidcar sidecar to the pods of Kubernetes YAML manifests, offline
//! (like `istioctl kube-inject` or `linkerd inject`). The work is `svidcar_inject`'s; this reads
//! the inputs and writes the output.
//!
//! All or nothing: every input is injected in memory first, and one bad document fails the run
//! (exit code 2) before anything is written.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use svidcar_identity::SpiffeId;
use svidcar_inject::{
    inject_manifest, HostPort, InjectConfig, LogLevel, MtlsMode, Outcome, Quantity, Resources,
    SocketVolume, DEFAULT_IMAGE,
};

/// `svidcar inject` flags. Per-pod `svidcar.io/…` annotations override them
/// (docs/injection.md).
#[derive(Debug, clap::Args)]
pub(crate) struct InjectArgs {
    /// YAML files, directories (their `*.yaml` and `*.yml`, sorted) or `-` for standard input.
    #[arg(default_value = "-")]
    inputs: Vec<PathBuf>,
    /// Write here instead of standard output (`-`: standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Image of the injected containers.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    image: String,
    /// `HOST:PORT` of `svidcar control`, e.g. svidcar-control.svidcar-system.svc:15012
    /// [default: none, no control plane].
    #[arg(long)]
    control_plane: Option<HostPort>,
    /// SPIFFE ID the control plane must present.
    #[arg(long, requires = "control_plane")]
    control_plane_id: Option<SpiffeId>,
    /// Where the Workload API socket directory comes from: `host-path` (/run/svidcar on the
    /// node) or `csi` (the SPIFFE CSI driver, csi.spiffe.io).
    #[arg(long, default_value = "host-path")]
    socket_volume: SocketVolume,
    /// The proxy as the first regular container held by a postStart hook, instead of a native
    /// sidecar (Kubernetes 1.29+).
    #[arg(long)]
    legacy_sidecar: bool,
    /// The proxy's log filter (SVIDCAR_LOG).
    #[arg(long, default_value = "info")]
    proxy_log_level: LogLevel,
    /// Inbound mTLS mode of the proxy: strict or permissive [default: the proxy's, strict].
    #[arg(long)]
    mtls: Option<MtlsMode>,
    /// The proxy's CPU request.
    #[arg(long, default_value = Resources::CPU_REQUEST)]
    proxy_cpu_request: Quantity,
    /// The proxy's memory request.
    #[arg(long, default_value = Resources::MEMORY_REQUEST)]
    proxy_memory_request: Quantity,
    /// The proxy's CPU limit.
    #[arg(long, default_value = Resources::CPU_LIMIT)]
    proxy_cpu_limit: Quantity,
    /// The proxy's memory limit.
    #[arg(long, default_value = Resources::MEMORY_LIMIT)]
    proxy_memory_limit: Quantity,
}

impl InjectArgs {
    fn config(&self) -> anyhow::Result<InjectConfig> {
        if self.image.is_empty() || self.image.contains(char::is_whitespace) {
            bail!("--image {:?}: expected an image reference", self.image);
        }
        Ok(InjectConfig {
            image: self.image.clone(),
            control_plane: self.control_plane.clone(),
            control_plane_id: self.control_plane_id.clone(),
            socket_volume: self.socket_volume,
            legacy_sidecar: self.legacy_sidecar,
            proxy_resources: Resources {
                cpu_request: self.proxy_cpu_request.clone(),
                memory_request: self.proxy_memory_request.clone(),
                cpu_limit: self.proxy_cpu_limit.clone(),
                memory_limit: self.proxy_memory_limit.clone(),
            },
            log_level: self.proxy_log_level.clone(),
            mtls: self.mtls,
        })
    }
}

/// One input: its name for messages and its text.
struct Input {
    name: String,
    text: String,
}

fn read_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            inputs.push(Input {
                name: "<stdin>".into(),
                text,
            });
        } else if path.is_dir() {
            for file in yaml_files(path)? {
                inputs.push(read_file(&file)?);
            }
        } else {
            inputs.push(read_file(path)?);
        }
    }
    Ok(inputs)
}

fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("{}", dir.display()))?.path();
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.yaml or *.yml files", dir.display());
    }
    Ok(files)
}

fn read_file(path: &Path) -> anyhow::Result<Input> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(Input {
        name: path.display().to_string(),
        text,
    })
}

/// Runs `svidcar inject`.
pub(crate) fn run(args: InjectArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let inputs = read_inputs(&args.inputs)?;
    let mut output = String::new();
    let mut notes = Vec::new();
    for input in &inputs {
        let injected = inject_manifest(&input.text, &cfg)
            .map_err(|e| anyhow::anyhow!("{}: {e}", input.name))?;
        for pod in &injected.pods {
            match &pod.outcome {
                Outcome::Skipped(reason) => {
                    notes.push(format!("{}: {}: skipped: {reason}", input.name, pod.at));
                }
                Outcome::Injected(pod_notes) => {
                    for note in pod_notes {
                        notes.push(format!("{}: {}: note: {note}", input.name, pod.at));
                    }
                }
            }
        }
        // Documents of several inputs stay apart.
        if !output.is_empty() {
            if !output.ends_with('\n') {
                output.push('\n');
            }
            if !injected.output.starts_with("---") {
                output.push_str("---\n");
            }
        }
        output.push_str(&injected.output);
    }
    for note in &notes {
        eprintln!("svidcar inject: {note}");
    }
    match args.output.as_deref() {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::write(path, output).with_context(|| format!("writing {}", path.display()))
        }
        _ => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(output.as_bytes())
                .and_then(|()| stdout.flush())
                .context("writing standard output")
        }
    }
}
