//! The `kubernetes:` section of the agent's configuration: pod attestation (see
//! [`crate::agent::k8s`]), off by default.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use svidcar_identity::config_file::{set, set_some};
use svidcar_identity::Dur;

use crate::agent::k8s::template::DEFAULT_TEMPLATE;
use crate::agent::k8s::{IdTemplate, K8sSettings, Kubelet, KubeletError, KubeletUrl, Verification};

/// Where Kubernetes mounts a pod's service-account token.
const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Pod attestation (YAML section `kubernetes`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Attest callers' pods through the kubelet (the agent must run with `hostPID`). Default
    /// `false`.
    pub enabled: bool,
    /// The kubelet's authenticated port, `https://<host>:<port>` (`/pods` is added). Default
    /// `https://127.0.0.1:10250` (the agent on the host network); in a DaemonSet without
    /// it, `https://$(NODE_IP):10250` with `NODE_IP` from `status.hostIP`.
    pub kubelet_url: KubeletUrl,
    /// CA certificates (PEM) that verify the kubelet's serving certificate. Required unless
    /// `skip_kubelet_verification`. Default: none.
    pub kubelet_ca: Option<PathBuf>,
    /// The name the kubelet's certificate must carry. Default: `node_name` if given, else the
    /// host of `kubelet_url`.
    pub kubelet_server_name: Option<String>,
    /// Accept any kubelet certificate (weaker: whoever can answer on the kubelet's address can
    /// tell the agent which pods exist, and receives the agent's token; SPIRE has the same
    /// setting). Exclusive with `kubelet_ca`. Default `false`.
    pub skip_kubelet_verification: bool,
    /// The agent's service-account token, sent as a bearer token; re-read for every request.
    /// Default `/var/run/secrets/kubernetes.io/serviceaccount/token`.
    pub token_file: PathBuf,
    /// This node's name (`spec.nodeName` through the downward API): pods of other nodes in the
    /// list are ignored, and it is the default `kubelet_server_name`. Default: none.
    pub node_name: Option<String>,
    /// Give every pod a default identity from `default_id_template`, after the identities of
    /// the registration entries it matches. Default `true`.
    pub default_id: bool,
    /// The path of the default identity, with `{namespace}` and `{service_account}`. Default
    /// `ns/{namespace}/sa/{service_account}`.
    pub default_id_template: String,
    /// How long a caller whose pod or container is not (yet) in the kubelet's pod list is
    /// waited for, refreshing the list with backoff, before it is refused. Default `5s`.
    pub attest_wait: Dur,
    /// How often the pod list is refreshed in the background (new pods' default SVIDs are
    /// issued then). Default `10s`.
    pub refresh_interval: Dur,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            kubelet_url: KubeletUrl::default(),
            kubelet_ca: None,
            kubelet_server_name: None,
            skip_kubelet_verification: false,
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            node_name: None,
            default_id: true,
            default_id_template: DEFAULT_TEMPLATE.to_owned(),
            attest_wait: Dur(Duration::from_secs(5)),
            refresh_interval: Dur(Duration::from_secs(10)),
        }
    }
}

impl KubernetesConfig {
    /// Checks the settings that need no I/O (only when enabled); returns the setting and the
    /// problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled {
            return Ok(());
        }
        let bad = |field, message: &str| Err((field, message.to_owned()));
        match (&self.kubelet_ca, self.skip_kubelet_verification) {
            (Some(_), true) => {
                return bad(
                    "kubernetes.skip_kubelet_verification",
                    "give either kubelet_ca or skip_kubelet_verification, not both",
                )
            }
            (None, false) => {
                return bad(
                    "kubernetes.kubelet_ca",
                    "required to verify the kubelet's serving certificate (the CA that signs \
                     it, e.g. the cluster CA with serverTLSBootstrap); or set \
                     skip_kubelet_verification: true (weaker)",
                )
            }
            _ => {}
        }
        if self.token_file.as_os_str().is_empty() {
            return bad("kubernetes.token_file", "must not be empty");
        }
        for (field, value) in [
            ("kubernetes.node_name", &self.node_name),
            ("kubernetes.kubelet_server_name", &self.kubelet_server_name),
        ] {
            if value.as_deref() == Some("") {
                return bad(field, "must not be empty when set");
            }
        }
        if self.default_id {
            IdTemplate::parse(&self.default_id_template)
                .map_err(|e| ("kubernetes.default_id_template", e.to_string()))?;
        }
        for (field, d) in [
            ("kubernetes.attest_wait", self.attest_wait),
            ("kubernetes.refresh_interval", self.refresh_interval),
        ] {
            if d.0.is_zero() {
                return bad(field, "must be greater than zero");
            }
        }
        Ok(())
    }

    /// The attestor's settings; reads the CA file. Call after [`KubernetesConfig::validate`].
    pub fn settings(&self) -> Result<K8sSettings, KubeletError> {
        let verification = match &self.kubelet_ca {
            Some(ca_file) if !self.skip_kubelet_verification => Verification::Ca {
                ca_file: ca_file.clone(),
                server_name: self
                    .kubelet_server_name
                    .clone()
                    .or_else(|| self.node_name.clone())
                    .unwrap_or_else(|| self.kubelet_url.host().to_owned()),
            },
            _ => Verification::Skip,
        };
        let kubelet = Kubelet::new(
            self.kubelet_url.clone(),
            verification,
            self.token_file.clone(),
        )?;
        let default_id = if self.default_id {
            IdTemplate::parse(&self.default_id_template).ok()
        } else {
            None
        };
        Ok(K8sSettings {
            kubelet,
            node_name: self.node_name.clone(),
            default_id,
            attest_wait: self.attest_wait.0,
        })
    }
}

/// Flags of the `kubernetes` settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubernetesFlags {
    /// kubernetes.enabled: attest callers' pods through the kubelet (needs hostPID)
    /// [default: false].
    #[arg(long = "kubernetes", env = "SVIDCAR_KUBERNETES", num_args = 0..=1, default_missing_value = "true")]
    pub enabled: Option<bool>,
    /// kubernetes.kubelet_url: the kubelet's authenticated port, https://<host>:<port>
    /// [default: https://127.0.0.1:10250].
    #[arg(long, env = "SVIDCAR_KUBELET_URL")]
    pub kubelet_url: Option<KubeletUrl>,
    /// kubernetes.kubelet_ca: CA certificates (PEM) verifying the kubelet's serving
    /// certificate; required unless --skip-kubelet-verification.
    #[arg(long, env = "SVIDCAR_KUBELET_CA")]
    pub kubelet_ca: Option<PathBuf>,
    /// kubernetes.kubelet_server_name: the name the kubelet's certificate must carry
    /// [default: --kubernetes-node-name, else the host of --kubelet-url].
    #[arg(long, env = "SVIDCAR_KUBELET_SERVER_NAME")]
    pub kubelet_server_name: Option<String>,
    /// kubernetes.skip_kubelet_verification: accept any kubelet certificate (weaker)
    /// [default: false].
    #[arg(long, env = "SVIDCAR_SKIP_KUBELET_VERIFICATION", num_args = 0..=1, default_missing_value = "true")]
    pub skip_kubelet_verification: Option<bool>,
    /// kubernetes.token_file: the agent's service-account token, re-read for every request
    /// [default: /var/run/secrets/kubernetes.io/serviceaccount/token].
    #[arg(long = "kubernetes-token-file", env = "SVIDCAR_KUBERNETES_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// kubernetes.node_name: this node's name; pods of other nodes are ignored.
    #[arg(long = "kubernetes-node-name", env = "SVIDCAR_NODE_NAME")]
    pub node_name: Option<String>,
    /// kubernetes.default_id: give every pod a default identity from the template
    /// [default: true].
    #[arg(long = "kubernetes-default-id", env = "SVIDCAR_KUBERNETES_DEFAULT_ID")]
    pub default_id: Option<bool>,
    /// kubernetes.default_id_template: the default identity's path, with {namespace} and
    /// {service_account} [default: ns/{namespace}/sa/{service_account}].
    #[arg(
        long = "kubernetes-default-id-template",
        env = "SVIDCAR_KUBERNETES_DEFAULT_ID_TEMPLATE"
    )]
    pub default_id_template: Option<String>,
    /// kubernetes.attest_wait: how long a caller missing from the pod list is waited for
    /// [default: 5s].
    #[arg(
        long = "kubernetes-attest-wait",
        env = "SVIDCAR_KUBERNETES_ATTEST_WAIT"
    )]
    pub attest_wait: Option<Dur>,
    /// kubernetes.refresh_interval: how often the pod list is refreshed [default: 10s].
    #[arg(
        long = "kubernetes-refresh-interval",
        env = "SVIDCAR_KUBERNETES_REFRESH_INTERVAL"
    )]
    pub refresh_interval: Option<Dur>,
}

impl KubernetesFlags {
    /// Writes every given flag over `c`.
    pub fn apply(&self, c: &mut KubernetesConfig) {
        set(&mut c.enabled, &self.enabled);
        set(&mut c.kubelet_url, &self.kubelet_url);
        set_some(&mut c.kubelet_ca, &self.kubelet_ca);
        set_some(&mut c.kubelet_server_name, &self.kubelet_server_name);
        set(
            &mut c.skip_kubelet_verification,
            &self.skip_kubelet_verification,
        );
        set(&mut c.token_file, &self.token_file);
        set_some(&mut c.node_name, &self.node_name);
        set(&mut c.default_id, &self.default_id);
        set(&mut c.default_id_template, &self.default_id_template);
        set(&mut c.attest_wait, &self.attest_wait);
        set(&mut c.refresh_interval, &self.refresh_interval);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn defaults_are_the_documented_values() {
        let c = KubernetesConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.kubelet_url.to_string(), "https://127.0.0.1:10250");
        assert_eq!((&c.kubelet_ca, &c.kubelet_server_name), (&None, &None));
        assert!(!c.skip_kubelet_verification);
        assert_eq!(
            c.token_file,
            Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
        assert_eq!(c.node_name, None);
        assert!(c.default_id);
        assert_eq!(c.default_id_template, "ns/{namespace}/sa/{service_account}");
        assert_eq!(c.attest_wait.to_string(), "5s");
        assert_eq!(c.refresh_interval.to_string(), "10s");
        assert_eq!(c.validate(), Ok(()), "off: nothing to check");
    }

    fn on() -> KubernetesConfig {
        KubernetesConfig {
            enabled: true,
            skip_kubelet_verification: true,
            ..KubernetesConfig::default()
        }
    }

    #[test]
    fn validation_names_the_setting() {
        assert_eq!(on().validate(), Ok(()));
        let cases: Vec<(KubernetesConfig, &str, &str)> = vec![
            (
                KubernetesConfig {
                    skip_kubelet_verification: false,
                    ..on()
                },
                "kubernetes.kubelet_ca",
                "required",
            ),
            (
                KubernetesConfig {
                    kubelet_ca: Some("/ca.pem".into()),
                    ..on()
                },
                "kubernetes.skip_kubelet_verification",
                "not both",
            ),
            (
                KubernetesConfig {
                    default_id_template: "ns/{namespace}/sa/{sa}".into(),
                    ..on()
                },
                "kubernetes.default_id_template",
                "unknown placeholder {sa}",
            ),
            (
                KubernetesConfig {
                    default_id_template: "ns/{namespace}//x".into(),
                    ..on()
                },
                "kubernetes.default_id_template",
                "invalid SPIFFE ID",
            ),
            (
                KubernetesConfig {
                    attest_wait: Dur(Duration::ZERO),
                    ..on()
                },
                "kubernetes.attest_wait",
                "greater than zero",
            ),
            (
                KubernetesConfig {
                    node_name: Some(String::new()),
                    ..on()
                },
                "kubernetes.node_name",
                "not be empty",
            ),
        ];
        for (c, field, why) in cases {
            let (f, message) = c.validate().unwrap_err();
            assert_eq!(f, field);
            assert!(message.contains(why), "{field}: {message}");
        }
        // A bad template does not matter when default identities are off.
        let off = KubernetesConfig {
            default_id: false,
            default_id_template: "{nope}".into(),
            ..on()
        };
        assert_eq!(off.validate(), Ok(()));
        assert!(off.settings().unwrap().default_id.is_none());
    }
}
