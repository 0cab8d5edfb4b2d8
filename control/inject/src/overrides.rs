//! A pod's settings: [`InjectConfig`] with the pod's `svidcar.io/…` annotations over it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::annotations as key;
use crate::config::{check_image, InjectConfig, LogLevel, MtlsMode, Resources};
use crate::error::InjectError;
use crate::quantity::Quantity;

/// What one pod gets: the configuration with its annotations applied, every value checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodSettings {
    pub(crate) image: String,
    pub(crate) log_level: LogLevel,
    pub(crate) mtls: Option<MtlsMode>,
    /// `SVIDCAR_PORT_MTLS`, `;`-separated, when annotated.
    pub(crate) port_mtls: Option<String>,
    /// `SVIDCAR_OPAQUE_PORTS`, comma-separated, when annotated.
    pub(crate) opaque_ports: Option<String>,
    /// `SVIDCAR_DESTINATIONS`, `;`-separated, when annotated.
    pub(crate) destinations: Option<String>,
    pub(crate) resources: Resources,
    /// Flags of `svidcar init` from the capture annotations (besides the fixed ones).
    pub(crate) init_flags: Vec<String>,
}

fn bad(key: &str, value: &str, reason: impl Into<String>) -> InjectError {
    InjectError::Annotation {
        kind: "annotation",
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Items of a list separated by any of `separators`, trimmed, empty ones dropped.
fn items<'a>(value: &'a str, separators: &'a [char]) -> impl Iterator<Item = &'a str> {
    value
        .split(separators)
        .map(str::trim)
        .filter(|i| !i.is_empty())
}

fn port(item: &str) -> Result<u16, String> {
    match item.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("`{item}` is not a port (a number from 1 to 65535)")),
    }
}

fn port_list(value: &str) -> Result<String, String> {
    let ports = items(value, &[','])
        .map(port)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(join(ports, ","))
}

/// `*` or a port list (possibly empty).
fn port_set(value: &str) -> Result<String, String> {
    if value.trim() == "*" {
        Ok("*".to_owned())
    } else {
        port_list(value)
    }
}

fn net(item: &str) -> Result<IpNet, String> {
    item.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{item}` is not a CIDR or an IP address"))
}

fn cidr_list(value: &str) -> Result<String, String> {
    let nets = items(value, &[','])
        .map(net)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(join(nets, ","))
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>, sep: &str) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

fn port_mtls(value: &str) -> Result<String, String> {
    let entries = items(value, &[',', ';'])
        .map(|entry| {
            let (p, mode) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}`: expected PORT=strict|permissive"))?;
            let p = port(p.trim())?;
            let mode = mode
                .trim()
                .parse::<MtlsMode>()
                .map_err(|e| format!("`{entry}`: {e}"))?;
            Ok(format!("{p}={}", mode.as_str()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(entries.join(";"))
}

/// One `CIDR[:PORT]=SPIFFE_ID|passthrough` entry, checked by the parser `svidcar run` uses.
fn destination(entry: &str) -> Result<String, String> {
    entry
        .parse::<svidcar_api::destination::Destination>()
        .map_err(|e| format!("`{entry}`: {e}"))?;
    Ok(entry.to_owned())
}

fn destinations(value: &str) -> Result<String, String> {
    let entries = items(value, &[',', ';', '\n'])
        .map(destination)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(entries.join(";"))
}

fn quantity(slot: &mut Quantity, key: &str, value: Option<&String>) -> Result<(), InjectError> {
    if let Some(v) = value {
        *slot = v.parse().map_err(|e| bad(key, v, format!("{e}")))?;
    }
    Ok(())
}

fn check_request(
    resource: &'static str,
    request: &Quantity,
    limit: &Quantity,
) -> Result<(), InjectError> {
    if request.value() > limit.value() {
        return Err(InjectError::RequestOverLimit {
            resource,
            request: request.to_string(),
            limit: limit.to_string(),
        });
    }
    Ok(())
}

/// The settings of a pod with these annotations. Every `svidcar.io/` annotation must be one we
/// know ([`key::ALL`]) with a valid value.
pub(crate) fn pod_settings(
    cfg: &InjectConfig,
    annotations: &BTreeMap<String, String>,
) -> Result<PodSettings, InjectError> {
    for (k, v) in annotations {
        if k.starts_with(key::PREFIX) && !key::ALL.contains(&k.as_str()) {
            return Err(bad(
                k,
                v,
                "not an annotation svidcar knows (see docs/injection.md)",
            ));
        }
    }
    let get = |k: &str| annotations.get(k);
    let convert =
        |k: &str, f: fn(&str) -> Result<String, String>| -> Result<Option<String>, InjectError> {
            get(k).map(|v| f(v).map_err(|e| bad(k, v, e))).transpose()
        };

    let mut init_flags = Vec::new();
    let capture = [
        (
            key::INBOUND_PORTS,
            "--inbound-ports",
            port_set as fn(&str) -> _,
        ),
        (
            key::SKIP_INBOUND_PORTS,
            "--inbound-ports-exclude",
            port_list,
        ),
        (key::OUTBOUND_PORTS, "--outbound-ports", port_set),
        (
            key::SKIP_OUTBOUND_PORTS,
            "--outbound-ports-exclude",
            port_list,
        ),
        (
            key::SKIP_OUTBOUND_CIDRS,
            "--outbound-cidrs-exclude",
            cidr_list,
        ),
    ];
    for (k, flag, f) in capture {
        if let Some(v) = convert(k, f)? {
            init_flags.push(format!("{flag}={v}"));
        }
    }

    let image = match get(key::PROXY_IMAGE) {
        Some(v) => {
            check_image(v).map_err(|e| bad(key::PROXY_IMAGE, v, e.to_string()))?;
            v.clone()
        }
        None => cfg.image.clone(),
    };
    let log_level = match get(key::LOG_LEVEL) {
        Some(v) => v
            .parse()
            .map_err(|e: crate::config::ValueError| bad(key::LOG_LEVEL, v, e.to_string()))?,
        None => cfg.log_level.clone(),
    };
    let mtls = match get(key::MTLS) {
        Some(v) => Some(v.parse().map_err(|e: String| bad(key::MTLS, v, e))?),
        None => cfg.mtls,
    };
    let mut resources = cfg.proxy_resources.clone();
    quantity(
        &mut resources.cpu_request,
        key::PROXY_CPU_REQUEST,
        get(key::PROXY_CPU_REQUEST),
    )?;
    quantity(
        &mut resources.memory_request,
        key::PROXY_MEMORY_REQUEST,
        get(key::PROXY_MEMORY_REQUEST),
    )?;
    quantity(
        &mut resources.cpu_limit,
        key::PROXY_CPU_LIMIT,
        get(key::PROXY_CPU_LIMIT),
    )?;
    quantity(
        &mut resources.memory_limit,
        key::PROXY_MEMORY_LIMIT,
        get(key::PROXY_MEMORY_LIMIT),
    )?;
    check_request("cpu", &resources.cpu_request, &resources.cpu_limit)?;
    check_request("memory", &resources.memory_request, &resources.memory_limit)?;

    Ok(PodSettings {
        image,
        log_level,
        mtls,
        port_mtls: convert(key::PORT_MTLS, port_mtls)?,
        opaque_ports: convert(key::OPAQUE_PORTS, port_list)?,
        destinations: convert(key::DESTINATIONS, destinations)?,
        resources,
        init_flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<PodSettings, InjectError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pod_settings(&InjectConfig::default(), &map)
    }

    fn reason(pairs: &[(&str, &str)]) -> String {
        settings(pairs).unwrap_err().to_string()
    }

    #[test]
    fn no_annotations_is_the_config() {
        let s = settings(&[("other.io/x", "y")]).unwrap();
        let cfg = InjectConfig::default();
        assert_eq!(s.image, cfg.image);
        assert_eq!(s.resources, cfg.proxy_resources);
        assert!(s.init_flags.is_empty() && s.mtls.is_none() && s.destinations.is_none());
    }

    #[test]
    fn every_annotation_lands() {
        let s = settings(&[
            (key::INBOUND_PORTS, "*"),
            (key::SKIP_INBOUND_PORTS, "22, 2222"),
            (key::OUTBOUND_PORTS, ""),
            (key::SKIP_OUTBOUND_PORTS, "5432"),
            (key::SKIP_OUTBOUND_CIDRS, "10.96.0.1/12,fd00::1"),
            (key::OPAQUE_PORTS, "3306,6379"),
            (key::MTLS, "permissive"),
            (key::PORT_MTLS, "8080=permissive, 9090=strict"),
            (
                key::DESTINATIONS,
                "10.0.0.0/8:443=spiffe://example.org/ns/db/sa/db; [fd00::/8]:80=passthrough",
            ),
            (key::LOG_LEVEL, "svidcar=debug,info"),
            (key::PROXY_CPU_REQUEST, "10m"),
            (key::PROXY_MEMORY_LIMIT, "1Gi"),
            (key::PROXY_IMAGE, "registry.example/svidcar:dev"),
        ])
        .unwrap();
        assert_eq!(
            s.init_flags,
            [
                "--inbound-ports=*",
                "--inbound-ports-exclude=22,2222",
                "--outbound-ports=",
                "--outbound-ports-exclude=5432",
                "--outbound-cidrs-exclude=10.96.0.0/12,fd00::1/128",
            ]
        );
        assert_eq!(s.opaque_ports.as_deref(), Some("3306,6379"));
        assert_eq!(s.mtls, Some(MtlsMode::Permissive));
        assert_eq!(s.port_mtls.as_deref(), Some("8080=permissive;9090=strict"));
        assert_eq!(
            s.destinations.as_deref(),
            Some("10.0.0.0/8:443=spiffe://example.org/ns/db/sa/db;[fd00::/8]:80=passthrough")
        );
        assert_eq!(s.log_level.as_str(), "svidcar=debug,info");
        assert_eq!(s.resources.cpu_request.as_str(), "10m");
        assert_eq!(s.resources.memory_limit.as_str(), "1Gi");
        assert_eq!(s.image, "registry.example/svidcar:dev");
    }

    #[test]
    fn bad_values_name_the_annotation() {
        let e = reason(&[(key::SKIP_INBOUND_PORTS, "22,ssh")]);
        assert_eq!(
            e,
            r#"annotation svidcar.io/skip-inbound-ports="22,ssh": `ssh` is not a port (a number from 1 to 65535)"#
        );
        assert!(reason(&[(key::MTLS, "strikt")]).contains("svidcar.io/mtls=\"strikt\""));
        assert!(reason(&[(key::PORT_MTLS, "8080")]).contains("expected PORT=strict|permissive"));
        assert!(reason(&[(key::PORT_MTLS, "8080=loose")]).contains("is not strict or permissive"));
        assert!(reason(&[(key::SKIP_OUTBOUND_CIDRS, "10.0.0.0/33")]).contains("not a CIDR"));
        assert!(reason(&[(key::DESTINATIONS, "10.0.0.0/8=db")]).contains("neither `passthrough`"));
        assert!(reason(&[(key::DESTINATIONS, "10.0.0.0/8:0=passthrough")]).contains("not a port"));
        assert!(reason(&[(key::DESTINATIONS, "nowhere")]).contains("expected CIDR"));
        assert!(reason(&[(key::PROXY_MEMORY_REQUEST, "lots")])
            .contains("svidcar.io/proxy-memory-request"));
        assert!(reason(&[(key::LOG_LEVEL, "very loud")]).contains("svidcar.io/log-level"));
        assert!(reason(&[(key::PROXY_IMAGE, "")]).contains("svidcar.io/proxy-image"));
        assert!(reason(&[(key::INBOUND_PORTS, "0")]).contains("`0` is not a port"));
        let e = reason(&[("svidcar.io/skip-inbound-port", "22")]);
        assert!(e.contains("not an annotation svidcar knows"), "{e}");
        let e = reason(&[(key::PROXY_CPU_REQUEST, "2")]);
        assert_eq!(e, "proxy cpu request 2 is larger than its limit 1");
    }
}
