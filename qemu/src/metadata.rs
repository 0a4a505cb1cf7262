//! A cloud provider's metadata service at 169.254.169.254, for a VM on QEMU's user network.
//!
//! VPS providers hand cloud-init its hostname and user-data over HTTP at the link-local
//! address 169.254.169.254, and cloud-init picks the provider from the machine's DMI strings.
//! QEMU can do both: `-smbios` sets the strings, and its user network (slirp) forwards a
//! guest's connections to an address of its virtual network to a command (`guestfwd=…-cmd:`),
//! one process per connection with the socket as that process's stdin and stdout. So the VM's
//! network becomes 169.0.0.0/8, which holds the metadata address without making the VM's own
//! DHCP address link-local, and [`serve_connection`] answers each request from the files
//! [`MetadataService::write_routes`] wrote.
//!
//! [`Hetzner`] is the provider modelled: its DMI strings, its URLs and its documents as
//! cloud-init's Hetzner datasource reads them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where every provider's metadata service listens.
pub const METADATA_ADDRESS: &str = "169.254.169.254";

/// The VM's user network when it has a metadata service: holds [`METADATA_ADDRESS`].
pub const NETWORK: &str = "169.0.0.0/8";
/// QEMU's DHCP server gives the (only) guest this address on [`NETWORK`].
pub const GUEST_ADDRESS: &str = "169.0.0.15/8";

/// The longest request head read; a metadata client sends a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// A provider as a VM sees it: its DMI strings, and a metadata service (the program QEMU runs
/// for each connection, one that calls [`serve_connection`], and what it serves, by URL path).
#[derive(Debug, Clone)]
pub struct MetadataService {
    /// QEMU's `-smbios` argument: what ds-identify and the datasource tell the provider by.
    pub smbios: String,
    pub responder: PathBuf,
    pub routes: Vec<(String, Vec<u8>)>,
}

impl MetadataService {
    /// Writes each route's body into `root`, where [`serve_connection`] finds it.
    pub fn write_routes(&self, root: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(root)?;
        for (path, body) in &self.routes {
            std::fs::write(root.join(route_file(path)), body)?;
        }
        Ok(())
    }

    /// QEMU's `-netdev user` options (after `user,id=…`) serving `root` at
    /// [`METADATA_ADDRESS`] port 80.
    pub fn netdev_options(&self, root: &Path) -> String {
        // QEMU's option syntax doubles commas inside a value.
        let cmd = format!("{} {}", self.responder.display(), root.display()).replace(',', ",,");
        format!(
            "net={NETWORK},host=169.0.0.2,dns=169.0.0.3,dhcpstart=169.0.0.15,\
             guestfwd=tcp:{METADATA_ADDRESS}:80-cmd:{cmd}"
        )
    }
}

/// The file in the routes' directory holding the body of URL `path`: the whole path as one
/// file name (a path may be both a document and a prefix of others, as Hetzner's
/// `/metadata` and `/metadata/instance-id` are), so no request can name a file outside it.
pub fn route_file(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut name = String::from("route");
    for c in path.chars() {
        match c {
            '%' => name.push_str("%25"),
            '/' => name.push_str("%2F"),
            c => name.push(c),
        }
    }
    name
}

/// The response to one request head (`GET /path HTTP/1.1`, headers) from `root`.
pub fn respond(root: &Path, head: &str) -> Vec<u8> {
    let mut words = head.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (words.next(), words.next());
    let (status, body) = match (method, path) {
        (Some("GET"), Some(path)) if path.starts_with('/') => {
            match std::fs::read(root.join(route_file(path))) {
                Ok(body) => ("200 OK", body),
                Err(_) => ("404 Not Found", b"not found\n".to_vec()),
            }
        }
        (Some("GET"), _) => ("400 Bad Request", b"bad request\n".to_vec()),
        _ => ("405 Method Not Allowed", b"only GET\n".to_vec()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend(body);
    out
}

/// Answers the one request on `input` to `output`, then returns (QEMU's `guestfwd` gives a
/// process per connection).
pub fn serve_connection(root: &Path, mut input: impl Read, mut output: impl Write) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    // The socket is stdout and stderr too: nothing else may be written, not even errors.
    let _ = output.write_all(&respond(root, &String::from_utf8_lossy(&head)));
    let _ = output.flush();
}

/// Hetzner Cloud, as cloud-init's Hetzner datasource sees it: DMI vendor `Hetzner` with the
/// server id as serial number, and `/hetzner/v1/metadata` (YAML) and `/hetzner/v1/userdata`.
#[derive(Debug, Clone)]
pub struct Hetzner {
    pub server_id: u64,
    pub hostname: String,
    pub user_data: String,
}

impl Hetzner {
    /// The provider for a server whose NIC has `mac`: DMI vendor `Hetzner` with the server id
    /// as serial number (the datasource checks it against the metadata's), and what the
    /// service serves. The metadata is JSON, which is YAML too; its network config is
    /// Hetzner's: DHCP on `eth0`, named by MAC.
    pub fn service(&self, responder: &Path, mac: &str) -> MetadataService {
        let metadata = serde_json::json!({
            "hostname": self.hostname,
            "instance-id": self.server_id,
            "local-ipv4": "",
            "public-ipv4": "",
            "public-keys": [],
            "network-config": {
                "version": 1,
                "config": [{
                    "type": "physical",
                    "name": "eth0",
                    "mac_address": mac,
                    "subnets": [{ "type": "dhcp", "ipv4": true }],
                }],
            },
        });
        let base = "/hetzner/v1";
        MetadataService {
            smbios: format!(
                "type=1,manufacturer=Hetzner,product=vServer,serial={}",
                self.server_id
            ),
            responder: responder.to_owned(),
            routes: vec![
                (
                    format!("{base}/metadata"),
                    format!("{metadata}\n").into_bytes(),
                ),
                (
                    format!("{base}/metadata/instance-id"),
                    self.server_id.to_string().into_bytes(),
                ),
                (
                    format!("{base}/metadata/hostname"),
                    self.hostname.clone().into_bytes(),
                ),
                (
                    format!("{base}/userdata"),
                    self.user_data.clone().into_bytes(),
                ),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(dir: &Path) -> MetadataService {
        let h = Hetzner {
            server_id: 4242,
            hostname: "vps-1".into(),
            user_data: "#cloud-config\nhostname: x\n".into(),
        };
        let s = h.service(Path::new("/bin/responder"), "52:54:00:aa:bb:cc");
        s.write_routes(dir).unwrap();
        s
    }

    fn body(response: &[u8]) -> (String, String) {
        let text = String::from_utf8_lossy(response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[test]
    fn a_document_and_the_paths_under_it_are_served_apart() {
        let dir = tempfile::tempdir().unwrap();
        service(dir.path());
        let get = |p: &str| {
            body(&respond(
                dir.path(),
                &format!("GET {p} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"),
            ))
        };
        let (status, md) = get("/hetzner/v1/metadata");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let md: serde_json::Value = serde_json::from_str(&md).unwrap();
        assert_eq!(md["instance-id"], 4242);
        assert_eq!(
            md["network-config"]["config"][0]["mac_address"],
            "52:54:00:aa:bb:cc"
        );
        assert_eq!(
            get("/hetzner/v1/metadata/instance-id"),
            ("HTTP/1.1 200 OK".into(), "4242".into())
        );
        assert_eq!(
            get("/hetzner/v1/userdata?x=1").1,
            "#cloud-config\nhostname: x\n"
        );
        assert_eq!(get("/hetzner/v1/nothing").0, "HTTP/1.1 404 Not Found");
    }

    #[test]
    fn requests_cannot_leave_the_routes_directory_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("routes");
        service(&inner);
        std::fs::write(dir.path().join("secret"), "no").unwrap();
        for path in ["/../secret", "/%2E%2E/secret", "/..", "/"] {
            let (status, _) = body(&respond(&inner, &format!("GET {path} HTTP/1.1\r\n\r\n")));
            assert_eq!(status, "HTTP/1.1 404 Not Found", "{path}");
        }
        assert!(!route_file("/../secret").contains('/'));
        let (status, _) = body(&respond(
            &inner,
            "POST /hetzner/v1/metadata HTTP/1.1\r\n\r\n",
        ));
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        let (status, _) = body(&respond(&inner, "GET\r\n\r\n"));
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
        let (status, _) = body(&respond(&inner, "\u{0}\u{1}garbage"));
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    }

    #[test]
    fn one_connection_gets_one_whole_response() {
        let dir = tempfile::tempdir().unwrap();
        service(dir.path());
        let request = b"GET /hetzner/v1/metadata/hostname HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut out = Vec::new();
        serve_connection(dir.path(), &request[..], &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nvps-1"), "{text}");
        // A client that hangs up early still gets an answer written, not a panic.
        let mut out = Vec::new();
        serve_connection(dir.path(), &b"GET /hetz"[..], &mut out);
        assert!(String::from_utf8(out).unwrap().contains("404"));
    }

    #[test]
    fn the_network_holds_the_metadata_address_and_the_responder_gets_its_root() {
        let s = service(tempfile::tempdir().unwrap().path());
        let opts = s.netdev_options(Path::new("/tmp/vm,1/routes"));
        assert!(opts.starts_with("net=169.0.0.0/8,"), "{opts}");
        assert!(
            opts.ends_with("guestfwd=tcp:169.254.169.254:80-cmd:/bin/responder /tmp/vm,,1/routes"),
            "{opts}"
        );
        assert!(GUEST_ADDRESS.starts_with("169.0.0.15/"));
    }
}
