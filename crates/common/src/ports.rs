//! Published ports: how a service says what ingress serves (`ServiceSpec::ports`).
//!
//! Uncloud's `x-ports` syntax: `[hostname[/path]:]port[/http|/https]`, e.g.
//! `app.example.com:8000/https`, `example.com/api:9000/http` or `8080/http`. The path is a
//! prefix (longest match wins at the ingress); without one the whole host is meant. The
//! protocol is `https` unless said. This is the only representation of a route in the state
//! (decision 0013); the parser is shared by stated (which refuses a malformed spec), `uc` and
//! ingressd.

use std::fmt;

/// How ingress serves a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Http,
    Https,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

/// One parsed published port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedPort {
    /// Lowercase DNS name, or `None` (not served under a hostname).
    pub hostname: Option<String>,
    /// Path prefix, starting with `/`; `/` when none was given.
    pub path: String,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// Why a published port does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("empty")]
    Empty,
    #[error("longer than {MAX_LEN} characters")]
    TooLong,
    #[error("{0:?} is not a port number between 1 and 65535")]
    Port(String),
    #[error("{0:?} is not a protocol: expected http or https")]
    Protocol(String),
    #[error("{0:?} is not a hostname: DNS labels of letters, digits and '-', joined by dots")]
    Hostname(String),
    #[error(
        "{0:?} is not a path prefix: letters, digits and -._~/ only, no empty or dot segments"
    )]
    Path(String),
    #[error("a path prefix needs a hostname: <hostname>/<path>:<port>")]
    PathWithoutHost,
    #[error("{0:?} is not a host port: expected [ip:][host_port:]container_port[/tcp|udp]@host")]
    HostMode(String),
}

/// Uncloud's host mode, in `x-ports` and `uc run -p`: `[ip:][host:]container[/tcp|udp]@host`
/// binds the port on each machine that runs a container of the service instead of serving it
/// through ingress (`80@host` is `80:80`). Returns the Docker form the shim takes
/// (`[ip:]host:container[/tcp|udp]`, `ServiceSpec::publish`), or `None` when `s` does not end
/// in `@host`.
pub fn host_mode(s: &str) -> Option<Result<String, PortError>> {
    let rest = s.trim().strip_suffix("@host")?;
    let bad = || PortError::HostMode(s.trim().to_string());
    let (ports, protocol) = match rest.rsplit_once('/') {
        Some((p, proto @ ("tcp" | "udp"))) => (p, Some(proto)),
        Some(_) => return Some(Err(bad())),
        None => (rest, None),
    };
    let port_ok = |p: &str| p.parse::<u16>().is_ok_and(|n| n != 0);
    let parts: Vec<&str> = ports.split(':').collect();
    let ports = match parts.as_slice() {
        [c] if port_ok(c) => format!("{c}:{c}"),
        [h, c] if port_ok(h) && port_ok(c) => format!("{h}:{c}"),
        [ip, h, c] if ip.parse::<std::net::Ipv4Addr>().is_ok() && port_ok(h) && port_ok(c) => {
            format!("{ip}:{h}:{c}")
        }
        _ => return Some(Err(bad())),
    };
    Some(Ok(match protocol {
        Some(p) => format!("{ports}/{p}"),
        None => ports,
    }))
}

const MAX_LEN: usize = 512;

impl PublishedPort {
    /// Parses one `x-ports` entry; the error says what is wrong with which part.
    pub fn parse(s: &str) -> Result<PublishedPort, PortError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PortError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(PortError::TooLong);
        }
        let (target, rest) = match s.rsplit_once(':') {
            Some((target, rest)) => (Some(target), rest),
            None => (None, s),
        };
        let (port, protocol) = match rest.split_once('/') {
            Some((port, protocol)) => (port, Some(protocol)),
            None => (rest, None),
        };
        let container_port = match port.parse::<u16>() {
            Ok(p) if p > 0 && port.chars().all(|c| c.is_ascii_digit()) => p,
            _ => return Err(PortError::Port(port.to_string())),
        };
        let protocol = match protocol.map(str::to_ascii_lowercase).as_deref() {
            None | Some("https") => Protocol::Https,
            Some("http") => Protocol::Http,
            Some(other) => return Err(PortError::Protocol(other.to_string())),
        };
        let (hostname, path) = match target {
            None => (None, "/".to_string()),
            Some(target) => {
                let (host, path) = match target.split_once('/') {
                    Some((host, path)) => (host, format!("/{path}")),
                    None => (target, "/".to_string()),
                };
                if host.is_empty() {
                    return Err(if path == "/" {
                        PortError::Hostname(String::new())
                    } else {
                        PortError::PathWithoutHost
                    });
                }
                (Some(parse_hostname(host)?), parse_path(&path)?)
            }
        };
        Ok(PublishedPort {
            hostname,
            path,
            container_port,
            protocol,
        })
    }
}

/// Checks a hostname as a published port names it; returns it in lowercase.
pub fn hostname(host: &str) -> Result<String, PortError> {
    parse_hostname(host)
}

fn parse_hostname(host: &str) -> Result<String, PortError> {
    let host = host.to_ascii_lowercase();
    let bad = || PortError::Hostname(host.clone());
    if host.len() > 253 {
        return Err(bad());
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(host)
}

/// A normalised prefix: no trailing slash (except `/` itself), no empty, `.` or `..` segment.
fn parse_path(path: &str) -> Result<String, PortError> {
    let bad = || PortError::Path(path.to_string());
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    for segment in trimmed[1..].split('/') {
        let ok = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
        if !ok {
            return Err(bad());
        }
    }
    Ok(trimmed.to_string())
}

impl fmt::Display for PublishedPort {
    /// The canonical form, which parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.hostname {
            f.write_str(host)?;
            if self.path != "/" {
                f.write_str(&self.path)?;
            }
            f.write_str(":")?;
        }
        write!(f, "{}/{}", self.container_port, self.protocol.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(host: Option<&str>, path: &str, port: u16, protocol: Protocol) -> PublishedPort {
        PublishedPort {
            hostname: host.map(Into::into),
            path: path.into(),
            container_port: port,
            protocol,
        }
    }

    #[test]
    fn host_mode_is_the_docker_form_and_other_entries_are_not_it() {
        for (given, docker) in [
            ("80@host", "80:80"),
            ("8080:80@host", "8080:80"),
            ("53/udp@host", "53:53/udp"),
            ("127.0.0.1:8080:80/tcp@host", "127.0.0.1:8080:80/tcp"),
        ] {
            assert_eq!(host_mode(given), Some(Ok(docker.to_string())), "{given}");
        }
        for bad in [
            "@host",
            "0@host",
            "80/http@host",
            "a:80:80@host",
            "1:2:3:4@host",
            "x@host",
        ] {
            assert!(
                matches!(host_mode(bad), Some(Err(PortError::HostMode(_)))),
                "{bad}"
            );
        }
        for ingress in ["80", "app.example.com:80/https", "8080:80"] {
            assert_eq!(host_mode(ingress), None, "{ingress}");
        }
    }

    #[test]
    fn the_forms_people_write() {
        use Protocol::*;
        let cases = [
            (
                "app.example.com:8000/https",
                p(Some("app.example.com"), "/", 8000, Https),
            ),
            (
                "App.Example.com:8000",
                p(Some("app.example.com"), "/", 8000, Https),
            ),
            (
                "example.com/api/v1/:9000/http",
                p(Some("example.com"), "/api/v1", 9000, Http),
            ),
            ("8080/http", p(None, "/", 8080, Http)),
            ("80", p(None, "/", 80, Https)),
        ];
        for (text, want) in cases {
            assert_eq!(PublishedPort::parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("", PortError::Empty),
            ("app.example.com:0/https", PortError::Port("0".into())),
            ("app.example.com:http", PortError::Port("http".into())),
            ("app.example.com:80/tcp", PortError::Protocol("tcp".into())),
            ("app..com:80", PortError::Hostname("app..com".into())),
            ("-app.com:80", PortError::Hostname("-app.com".into())),
            ("a_b.com:80", PortError::Hostname("a_b.com".into())),
            ("/api:80", PortError::PathWithoutHost),
            ("a.com/../etc:80", PortError::Path("/../etc".into())),
            ("a.com/x?y=1:80", PortError::Path("/x?y=1".into())),
            ("a.com:+80", PortError::Port("+80".into())),
            ("a.com:70000", PortError::Port("70000".into())),
        ];
        for (text, want) in cases {
            assert_eq!(PublishedPort::parse(text), Err(want), "{text}");
        }
        assert_eq!(
            PublishedPort::parse(&"a".repeat(600)),
            Err(PortError::TooLong)
        );
    }

    proptest! {
        #[test]
        fn canonical_form_round_trips(
            host in proptest::option::of("[a-z][a-z0-9-]{0,8}[a-z0-9](\\.[a-z][a-z0-9]{0,5}){0,3}"),
            path in "(/[a-zA-Z0-9_~-]{1,6}){0,3}",
            port in 1u16..,
            https in any::<bool>(),
        ) {
            let path = if host.is_none() || path.is_empty() { "/".to_string() } else { path };
            let protocol = if https { Protocol::Https } else { Protocol::Http };
            let want = p(host.as_deref(), &path, port, protocol);
            prop_assert_eq!(PublishedPort::parse(&want.to_string()), Ok(want));
        }

        #[test]
        fn any_input_is_a_value_or_an_error(s in "\\PC{0,80}") {
            let _ = PublishedPort::parse(&s);
        }
    }
}
