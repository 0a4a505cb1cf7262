//! Services on a network of VMs, seen the way a user sees them: containers as `uc ps` lists
//! them, commands run in them with `uc exec`, HTTPS through an ingress machine with `curl`
//! from the laptop.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::network::Lan;

/// One container as `uc ps -o json` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// `web.shop`: how `uc` names the service.
    pub service: String,
    pub name: String,
    pub id: String,
    pub machine: String,
    /// `running`, `exited`, … as its machine last wrote it.
    pub state: String,
    /// How the answering machine sees the container's machine: `alive`, `suspect`, `down`.
    pub machine_state: String,
    pub healthy: bool,
    pub ip: String,
    pub revision: u64,
}

impl Container {
    /// The container's hostname: Docker's default, the first 12 digits of its id (the shim
    /// sets none), which the test's web servers answer with.
    pub fn hostname(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// One service as `uc ps -o json` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `web.shop`.
    pub name: String,
    /// Its virtual address (`lb.` name); empty when it has none.
    pub vip: String,
    /// Containers made from an earlier spec than the current one.
    pub outdated: u64,
}

/// What `uc ps` shows through one machine: every service and every container.
#[derive(Debug, Clone, Default)]
pub struct Ps {
    pub services: Vec<Service>,
    pub containers: Vec<Container>,
}

impl Ps {
    /// The containers of `service` (`web.shop`) that run, healthy, on machines the answering
    /// one sees alive.
    pub fn running(&self, service: &str) -> Vec<&Container> {
        self.containers
            .iter()
            .filter(|c| {
                c.service == service
                    && c.state == "running"
                    && c.healthy
                    && c.machine_state == "alive"
            })
            .collect()
    }

    /// The running container of `service` on `machine`.
    pub fn on(&self, service: &str, machine: &str) -> Option<&Container> {
        self.running(service)
            .into_iter()
            .find(|c| c.machine == machine)
    }

    /// `service`'s virtual address.
    pub fn vip(&self, service: &str) -> Option<&str> {
        self.services
            .iter()
            .find(|s| s.name == service && !s.vip.is_empty())
            .map(|s| s.vip.as_str())
    }

    /// Whether every service of `project` runs its current spec everywhere.
    pub fn settled(&self, project: &str) -> bool {
        let suffix = format!(".{project}");
        self.services
            .iter()
            .filter(|s| s.name.ends_with(&suffix))
            .all(|s| s.outdated == 0)
    }

    /// Parses `uc ps -o json` (the replies of one machine).
    pub fn parse(replies: &serde_json::Value) -> Option<Ps> {
        let mut ps = Ps::default();
        for service in replies.get(0)?["answer"]["services"].as_array()? {
            let name = service["name"].as_str()?;
            let name = match service["project"].as_str()? {
                "" => name.to_string(),
                p => format!("{name}.{p}"),
            };
            ps.services.push(Service {
                name: name.clone(),
                vip: service["vip"].as_str().unwrap_or_default().to_string(),
                outdated: service["outdated"].as_u64().unwrap_or(0),
            });
            for c in service["containers"].as_array()? {
                let s = |k: &str| c[k].as_str().map(String::from);
                ps.containers.push(Container {
                    service: name.clone(),
                    name: s("name")?,
                    id: s("id")?,
                    machine: s("machine")?,
                    state: s("state")?,
                    machine_state: s("machine_state")?,
                    healthy: c["healthy"].as_bool()?,
                    ip: s("ip")?,
                    revision: c["revision"].as_u64()?,
                });
            }
        }
        Some(ps)
    }
}

impl Lan {
    /// `uc image push -m LOADED_ON IMAGE` from the Docker at `docker_host` (`unix://…`), which
    /// must load it on each of `loaded_on`. Only those are asked: a machine that joined
    /// seconds ago may be alive before its dockerd-shim answers (the arm64 VM in the story,
    /// which does not run the amd64 image anyway).
    pub fn push_image(&self, docker_host: &str, image: &str, loaded_on: &[&str]) {
        let machines = loaded_on.join(",");
        let out = self
            .uc
            .command(&["image", "push", "-m", &machines, image])
            .env("DOCKER_HOST", docker_host)
            .output()
            .expect("uc runs");
        let rows = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "uc image push {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let loaded = format!("loaded {image}");
        for name in loaded_on {
            assert!(
                rows.lines()
                    .any(|l| l.starts_with(name) && l.ends_with(&loaded)),
                "{name} did not load {image}: {rows}"
            );
        }
    }

    /// `uc ps` through the machine at `endpoint`; `None` when it does not answer.
    pub fn ps(&self, endpoint: &str) -> Option<Ps> {
        Ps::parse(&self.uc.try_json(&["ps", "--endpoint", endpoint])?)
    }

    /// Runs `sh -c SCRIPT` in container `c` (`uc exec` through `endpoint`); its output when
    /// it exits 0.
    pub fn exec(&self, endpoint: &str, c: &Container, script: &str) -> Option<String> {
        let target = format!("{}/{}", c.service, c.name);
        let out = self.uc.run(&[
            "exec",
            "--endpoint",
            endpoint,
            &target,
            "--",
            "sh",
            "-c",
            script,
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The addresses `name` resolves to inside container `c` (busybox `nslookup`, through the
    /// container's resolver: its machine's dnsd); empty for a name without addresses.
    pub fn resolve_in(
        &self,
        endpoint: &str,
        c: &Container,
        name: &str,
    ) -> Option<BTreeSet<String>> {
        // nslookup exits 1 on NODATA/NXDOMAIN: what it printed still says which.
        let out = self.exec(endpoint, c, &format!("nslookup {name} 2>&1; true"))?;
        Some(nslookup_addresses(&out))
    }

    /// The last line an HTTP server in the network answers `GET /` with, asked from inside
    /// container `c` by name (`nc`: busybox's `wget` crashes in these containers).
    pub fn fetch_in(&self, endpoint: &str, c: &Container, host: &str, port: u16) -> Option<String> {
        let out = self.exec(
            endpoint,
            c,
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"),
        )?;
        last_line(&out)
    }

    /// `GET https://HOST/` from the laptop, sent to `ip` (`curl --resolve`), trusting only
    /// `roots`: the status and the body's last line.
    pub fn https_get(&self, host: &str, ip: Ipv4Addr, roots: &Path) -> Option<(u16, String)> {
        let out = self
            .laptop
            .command("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(roots)
            .arg("--resolve")
            .arg(format!("{host}:443:{ip}"))
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://{host}/"))
            .output()
            .expect("curl runs (package curl)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, last_line(body)?))
    }

    /// The status of a plain-HTTP `GET /` for `host`, sent to `ip`.
    pub fn http_status(&self, host: &str, ip: Ipv4Addr) -> Option<u16> {
        let out = self
            .laptop
            .command("curl")
            .args([
                "-s",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("-H")
            .arg(format!("Host: {host}"))
            .arg(format!("http://{ip}/"))
            .output()
            .expect("curl runs (package curl)");
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

/// The last non-blank line of `text`, trimmed.
fn last_line(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(String::from)
}

/// The addresses in busybox `nslookup`'s answer: those after a `Name:` line (the ones before
/// it are the server's own).
pub fn nslookup_addresses(out: &str) -> BTreeSet<String> {
    let mut answers = BTreeSet::new();
    let mut in_answer = false;
    for line in out.lines() {
        let line = line.trim();
        if line.starts_with("Name:") {
            in_answer = true;
        } else if let Some(rest) = line.strip_prefix("Address") {
            // `Address: 10.210.2.2` or `Address 1: 10.210.2.2`.
            let value = rest.split_once(':').map(|(_, v)| v.trim()).unwrap_or("");
            if in_answer && !value.is_empty() {
                answers.insert(value.to_string());
            }
        }
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nslookup_answers_leave_the_server_out() {
        let out = "Server:\t\t10.210.1.1\nAddress:\t10.210.1.1:53\n\nName:\tcache.shop.internal\n\
                   Address: 10.210.1.3\n\nName:\tcache.shop.internal\nAddress: 10.210.3.2\n\n";
        assert_eq!(
            nslookup_addresses(out),
            BTreeSet::from(["10.210.1.3".to_string(), "10.210.3.2".to_string()])
        );
        let nodata = "Server:\t\t10.210.1.1\nAddress:\t10.210.1.1:53\n\n\
                      *** Can't find db.shop.internal: No answer\n\n";
        assert!(nslookup_addresses(nodata).is_empty());
    }

    #[test]
    fn ps_reads_containers_and_virtual_addresses() {
        let replies = serde_json::json!([{"machine": "alpha", "answer": {"services": [
            {"name": "web", "project": "shop", "vip": "10.210.0.1", "outdated": 1, "containers": [
                {"id": "0123456789abcdef", "name": "shop-web-1a2b", "machine": "bravo",
                 "state": "running", "healthy": true, "machine_state": "alive",
                 "ip": "10.210.2.2", "revision": 1},
                {"id": "fedcba9876543210", "name": "shop-web-3c4d", "machine": "charlie",
                 "state": "running", "healthy": true, "machine_state": "down",
                 "ip": "10.210.3.2", "revision": 1}]},
            {"name": "job", "project": "", "vip": "", "outdated": 0, "containers": []}]}}]);
        let ps = Ps::parse(&replies).unwrap();
        let web = ps.on("web.shop", "bravo").unwrap();
        assert_eq!(web.hostname(), "0123456789ab");
        assert_eq!(ps.vip("web.shop"), Some("10.210.0.1"));
        assert_eq!(ps.vip("job"), None);
        assert!(ps.on("web.shop", "alpha").is_none());
        // A container on a machine that is down may have stopped since: not counted.
        assert!(ps.on("web.shop", "charlie").is_none());
        assert!(!ps.settled("shop"));
    }
}
