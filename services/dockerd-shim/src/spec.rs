//! A service spec from the shared model turned into a Docker create request. Pure.
//!
//! Only fields Docker API 1.41 (docker.io 20.10) knows are ever set. User input in the spec
//! (`-p` and `-v` syntax, restart policy, health check) is parsed here, and anything malformed
//! is a [`SpecError`] naming the field, before the engine is asked for anything.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, Mount, MountType,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use uncloud_common::model::{Service, ServiceSpec};

use crate::network::MANAGED_LABEL;

pub const LABEL_SERVICE_ID: &str = "org.uncloud.service.id";
pub const LABEL_SERVICE_NAME: &str = "org.uncloud.service.name";
pub const LABEL_REVISION: &str = "org.uncloud.service.revision";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {why}")]
pub struct SpecError {
    pub field: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn bad(field: &'static str, value: &str, why: &'static str) -> SpecError {
    SpecError {
        field,
        value: value.to_string(),
        why,
    }
}

/// A file written for a container on the host (see `crate::files`), bind-mounted read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBind {
    pub source: std::path::PathBuf,
    pub target: String,
}

/// One `-p` entry: `[ip:]host:container[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: &'static str,
}

pub fn parse_publish(s: &str) -> Result<Publish, SpecError> {
    let err = |why| bad("published port", s, why);
    let (ports, protocol) = match s.rsplit_once('/') {
        Some((p, "tcp")) => (p, "tcp"),
        Some((p, "udp")) => (p, "udp"),
        Some(_) => return Err(err("protocol must be tcp or udp")),
        None => (s, "tcp"),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| err("ports are numbers from 1 to 65535"))
    };
    let (host_ip, host, container) = match parts.as_slice() {
        [host, container] => (None, *host, *container),
        [ip, host, container] => (
            Some(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| err("not an IPv4 address"))?,
            ),
            *host,
            *container,
        ),
        _ => return Err(err("expected [ip:]host:container[/tcp|/udp]")),
    };
    Ok(Publish {
        host_ip,
        host_port: port(host)?,
        container_port: port(container)?,
        protocol,
    })
}

/// One `-v` entry: `source:target[:ro]`; a source starting with `/` is a bind mount, anything
/// else a named volume.
pub fn parse_volume(s: &str) -> Result<Mount, SpecError> {
    let err = |why| bad("volume", s, why);
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        _ => return Err(err("expected source:target[:ro]")),
    };
    if !target.starts_with('/') {
        return Err(err("the target must be an absolute path"));
    }
    let typ = if source.starts_with('/') {
        MountType::BIND
    } else if !source.is_empty()
        && source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        MountType::VOLUME
    } else {
        return Err(err(
            "the source must be an absolute path or a volume name ([A-Za-z0-9_.-])",
        ));
    };
    Ok(Mount {
        target: Some(target.into()),
        source: Some(source.into()),
        typ: Some(typ),
        read_only: Some(read_only),
        ..Default::default()
    })
}

fn restart_policy(s: &str) -> Result<RestartPolicyNameEnum, SpecError> {
    Ok(match s {
        "" | "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "no" => RestartPolicyNameEnum::NO,
        "always" => RestartPolicyNameEnum::ALWAYS,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        _ => {
            return Err(bad(
                "restart policy",
                s,
                "expected no, always, on-failure or unless-stopped",
            ))
        }
    })
}

fn ms_to_ns(ms: u64) -> Option<i64> {
    (ms > 0).then(|| (ms as i64).saturating_mul(1_000_000))
}

/// Checks everything in `spec` that the engine would otherwise reject halfway.
pub fn validate(spec: &ServiceSpec) -> Result<(), SpecError> {
    if spec.image.trim().is_empty() {
        return Err(bad("image", &spec.image, "must not be empty"));
    }
    for p in &spec.publish {
        parse_publish(p)?;
    }
    for v in &spec.volumes {
        parse_volume(v)?;
    }
    restart_policy(&spec.restart)?;
    if let Some(h) = &spec.healthcheck {
        match h.test.first().map(String::as_str) {
            Some("CMD") | Some("CMD-SHELL") | Some("NONE") => {}
            _ => {
                return Err(bad(
                    "health check",
                    &h.test.join(" "),
                    "must start with CMD, CMD-SHELL or NONE",
                ))
            }
        }
    }
    let word = |w: &str, extra: &[char]| {
        !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
    };
    for c in spec.cap_add.iter().chain(&spec.cap_drop) {
        if !word(c, &[]) {
            return Err(bad(
                "capability",
                c,
                "expected a name such as NET_ADMIN or ALL",
            ));
        }
    }
    for k in spec.sysctls.keys() {
        if !word(k, &['.', '-', '/']) {
            return Err(bad(
                "sysctl",
                k,
                "expected a name such as net.core.somaxconn",
            ));
        }
    }
    if !spec.stop_signal.is_empty() && !word(&spec.stop_signal, &[]) {
        return Err(bad(
            "stop signal",
            &spec.stop_signal,
            "expected a name such as SIGQUIT or a number",
        ));
    }
    for k in spec.env.keys() {
        if k.is_empty() || k.contains('=') {
            return Err(bad(
                "environment variable name",
                k,
                "must be non-empty without '='",
            ));
        }
    }
    Ok(())
}

/// The create request for one container of `service` on network `network` with DNS at
/// `dns` (the machine's mesh address) and search domain `internal`.
/// `files` are the spec's files as written for this container, one for each.
pub fn create_body(
    service: &Service,
    network: &str,
    dns: Ipv4Addr,
    files: &[FileBind],
) -> Result<ContainerCreateBody, SpecError> {
    let spec = &service.spec;
    validate(spec)?;
    if files.len() != spec.files.len() {
        return Err(bad(
            "files",
            &format!("{} of {}", files.len(), spec.files.len()),
            "the spec mounts files the shim did not write",
        ));
    }
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(MANAGED_LABEL.into(), "true".into());
    labels.insert(LABEL_SERVICE_ID.into(), service.id.clone());
    labels.insert(LABEL_SERVICE_NAME.into(), service.name.clone());
    labels.insert(LABEL_REVISION.into(), service.revision.to_string());

    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.publish {
        let p = parse_publish(p)?;
        let key = format!("{}/{}", p.container_port, p.protocol);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.map(|ip| ip.to_string()),
                host_port: Some(p.host_port.to_string()),
            });
    }
    let mut mounts = spec
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    mounts.extend(files.iter().map(|f| Mount {
        target: Some(f.target.clone()),
        source: Some(f.source.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    }));
    let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(h.test.clone()),
        interval: ms_to_ns(h.interval_ms),
        timeout: ms_to_ns(h.timeout_ms),
        retries: (h.retries > 0).then_some(i64::from(h.retries)),
        start_period: ms_to_ns(h.start_period_ms),
        // StartInterval is API 1.44: never sent.
        start_interval: None,
    });
    let host_config = HostConfig {
        network_mode: Some(network.to_string()),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        mounts: (!mounts.is_empty()).then_some(mounts),
        restart_policy: Some(RestartPolicy {
            name: Some(restart_policy(&spec.restart)?),
            maximum_retry_count: None,
        }),
        nano_cpus: (spec.cpu_millis > 0).then(|| (spec.cpu_millis as i64) * 1_000_000),
        memory: (spec.memory_bytes > 0).then_some(spec.memory_bytes as i64),
        dns: Some(vec![dns.to_string()]),
        dns_search: Some(vec!["internal".into()]),
        cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
        cap_drop: (!spec.cap_drop.is_empty()).then(|| spec.cap_drop.clone()),
        sysctls: (!spec.sysctls.is_empty()).then(|| {
            spec.sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        entrypoint: (!spec.entrypoint.is_empty()).then(|| spec.entrypoint.clone()),
        user: (!spec.user.is_empty()).then(|| spec.user.clone()),
        stop_signal: (!spec.stop_signal.is_empty()).then(|| spec.stop_signal.clone()),
        stop_timeout: spec.stop_grace_secs().map(i64::from),
        env: (!spec.env.is_empty())
            .then(|| spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        labels: Some(labels),
        healthcheck,
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings::default(),
            )])),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_common::model::HealthCheck;

    fn service(spec: ServiceSpec) -> Service {
        Service {
            id: "s1".into(),
            name: "web".into(),
            revision: 4,
            spec,
            ..Default::default()
        }
    }

    #[test]
    fn publish_syntax() {
        assert_eq!(
            parse_publish("8080:80").unwrap(),
            Publish {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                protocol: "tcp"
            }
        );
        let p = parse_publish("127.0.0.1:53:5353/udp").unwrap();
        assert_eq!(p.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (53, 5353, "udp")
        );
        for bad in [
            "80",
            "0:80",
            "a:80",
            "1:2:3:4",
            "80:80/sctp",
            "x.y:1:2",
            "70000:1",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volume_syntax() {
        let m = parse_volume("data:/var/lib/data").unwrap();
        assert_eq!(m.typ, Some(MountType::VOLUME));
        assert_eq!(m.read_only, Some(false));
        let m = parse_volume("/srv/conf:/etc/app:ro").unwrap();
        assert_eq!(m.typ, Some(MountType::BIND));
        assert_eq!(m.read_only, Some(true));
        for bad in [
            "data",
            "data:rel/path",
            "da ta:/x",
            ":/x",
            "a:/b:rx",
            "a:/b:ro:x",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_spec_becomes_a_1_41_request() {
        let spec = ServiceSpec {
            image: "busybox:1".into(),
            command: vec!["sleep".into(), "60".into()],
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            env: [("A".to_string(), "1".to_string())].into(),
            publish: vec!["8080:80".into(), "8443:443/tcp".into()],
            volumes: vec!["data:/data".into()],
            cpu_millis: 500,
            memory_bytes: 64 << 20,
            restart: "on-failure".into(),
            healthcheck: Some(HealthCheck {
                test: vec!["CMD-SHELL".into(), "true".into()],
                interval_ms: 1000,
                retries: 3,
                ..Default::default()
            }),
            labels: [("team".to_string(), "a".to_string())].into(),
            user: "1000:1000".into(),
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["MKNOD".into()],
            sysctls: [("net.core.somaxconn".to_string(), "1024".to_string())].into(),
            stop_signal: "SIGQUIT".into(),
            stop_grace_ms: 2500,
            ..Default::default()
        };
        let body = create_body(
            &service(spec),
            "uncloud",
            "10.210.3.1".parse().unwrap(),
            &[],
        )
        .unwrap();
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(body.stop_timeout, Some(3));
        let hc = body.host_config.as_ref().unwrap();
        assert_eq!(hc.cap_add, Some(vec!["NET_ADMIN".to_string()]));
        assert_eq!(hc.cap_drop, Some(vec!["MKNOD".to_string()]));
        assert_eq!(hc.sysctls.as_ref().unwrap()["net.core.somaxconn"], "1024");
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.dns, Some(vec!["10.210.3.1".to_string()]));
        assert_eq!(hc.dns_search, Some(vec!["internal".to_string()]));
        assert_eq!(hc.network_mode.as_deref(), Some("uncloud"));
        assert_eq!(hc.port_bindings.as_ref().unwrap().len(), 2);
        let labels = body.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_SERVICE_ID], "s1");
        assert_eq!(labels[LABEL_REVISION], "4");
        assert_eq!(labels["team"], "a");
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        let hcheck = body.healthcheck.as_ref().unwrap();
        assert_eq!(hcheck.interval, Some(1_000_000_000));
        assert_eq!(hcheck.start_interval, None);

        // Nothing newer than API 1.41 in the JSON.
        let json = serde_json::to_value(&body).unwrap();
        let host = json["HostConfig"].as_object().unwrap();
        for k in host.keys() {
            assert!(
                !["Annotations", "CgroupnsMode", "ConsoleSize"].contains(&k.as_str()),
                "{k} is newer than 1.41"
            );
        }
        assert!(json["Healthcheck"].get("StartInterval").is_none());
    }

    #[test]
    fn invalid_specs_are_named_before_the_engine_sees_them() {
        let cases = [
            (
                ServiceSpec {
                    image: " ".into(),
                    ..Default::default()
                },
                "image",
            ),
            (
                ServiceSpec {
                    image: "x".into(),
                    publish: vec!["80".into()],
                    ..Default::default()
                },
                "published port",
            ),
            (
                ServiceSpec {
                    image: "x".into(),
                    volumes: vec!["v".into()],
                    ..Default::default()
                },
                "volume",
            ),
            (
                ServiceSpec {
                    image: "x".into(),
                    restart: "sometimes".into(),
                    ..Default::default()
                },
                "restart policy",
            ),
            (
                ServiceSpec {
                    image: "x".into(),
                    env: [("A=B".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
                "environment variable name",
            ),
            (
                ServiceSpec {
                    image: "x".into(),
                    cap_add: vec!["NET ADMIN".into()],
                    ..Default::default()
                },
                "capability",
            ),
            (
                ServiceSpec {
                    image: "x".into(),
                    sysctls: [("net core;".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
                "sysctl",
            ),
            (
                ServiceSpec {
                    image: "x".into(),
                    stop_signal: "-9".into(),
                    ..Default::default()
                },
                "stop signal",
            ),
            (
                ServiceSpec {
                    image: "x".into(),
                    healthcheck: Some(HealthCheck {
                        test: vec!["true".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "health check",
            ),
        ];
        for (spec, field) in cases {
            let e = create_body(&service(spec), "uncloud", Ipv4Addr::LOCALHOST, &[]).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }
}
