//! What the two tools behind `./scripts/up` share (namespaces: `uncloud-up`; VMs:
//! `uncloud-up-vm`): root, the stop signals, and the demo project they deploy
//! (`examples/demo/compose.yaml`).

use nix::sys::signal::{SigSet, Signal};

/// Fails unless this process runs as root (namespaces, TUN and tap devices).
pub fn require_root(tool: &str) -> Result<(), String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if root {
        Ok(())
    } else {
        Err(format!(
            "{tool} needs root (network namespaces, TUN and tap devices)"
        ))
    }
}

/// Blocks SIGTERM and SIGINT in this thread and those it starts from now on; `wait` on the
/// set returned receives them. Call it before any thread starts.
pub fn block_stop_signals() -> SigSet {
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().expect("block signals");
    stop
}

/// The hostname the demo publishes through ingress.
pub const HOST: &str = "demo.uncloud.test";

/// The demo image's tag, as the Compose file names it.
pub const IMAGE: &str = "uncloud/demo:1";

/// What the demo image runs: a web server on port 8080 that says which container answered.
const SERVER: &str = "mkdir -p /w && echo \"${GREETING:-hello} from $(hostname)\" > /w/index.html && exec httpd -f -p 8080 -h /w";

/// The `docker import --change` that makes a busybox the demo image.
pub fn entrypoint() -> String {
    format!(
        "ENTRYPOINT [\"/bin/sh\", \"-c\", {}]",
        serde_json::to_string(SERVER).expect("a string serializes")
    )
}
