//! `dockerd-shim.md`: how the run was made, on what, and the figures beside the docker CLI's.

use super::{Measured, Plan};
use crate::report::{fmt_num, line, Results};
use crate::stats::summary_ms;
use crate::sys::Machine;

pub fn render(
    plan: &Plan,
    m: &Measured,
    results: &Results,
    command: &str,
    machine: &Machine,
) -> String {
    let mut out = String::new();
    let s = &mut out;
    line(s, "# dockerd-shim benchmark\n");
    if plan.quick {
        line(
            s,
            "**Quick smoke run** (`--quick`): few runs and a small batch; not comparable with \
             the full run.\n",
        );
    }
    line(
        s,
        format!("Command (from the workspace root, as root):\n\n```\n{command}\n```\n"),
    );
    line(s, "## Machine\n");
    s.push_str(&machine.markdown_list());
    line(
        s,
        format!(
            "- engine: Debian's docker.io {}; reference: its `docker` CLI\n",
            m.engine_version
        ),
    );
    line(s, "## Results\n");
    line(
        s,
        "`ratio` = shim / reference; below 1 is better. The reference of every time is the \
         `docker run -d` CLI starting the same containers on the same engine; the reference of \
         memory is dockerd itself.\n",
    );
    line(s, "| metric | dockerd-shim | reference | ratio | unit |");
    line(s, "|---|---:|---:|---:|---|");
    for (name, r) in results {
        let reference = if name.starts_with("rss") {
            "dockerd"
        } else if name.starts_with("health") {
            "docker events"
        } else {
            "docker CLI"
        };
        line(
            s,
            format!(
                "| `{name}` | {} | {} ({reference}) | {:.3} | {} |",
                fmt_num(r.value),
                fmt_num(r.reference),
                r.ratio,
                r.unit
            ),
        );
    }
    // The issue's target: a health transition reaches the state within a second of the
    // engine reporting it.
    let lag: Vec<f64> = m
        .health_state
        .iter()
        .zip(&m.health_events)
        .map(|(s, e)| s - e)
        .collect();
    let worst = lag.iter().copied().fold(f64::NAN, f64::max);
    line(
        s,
        format!(
            "\nTarget: a health transition reaches the state within 1 s of the engine reporting \
             it: worst of {} flips {worst:.0} ms: **{}**\n",
            lag.len(),
            if worst < 1000.0 { "PASS" } else { "FAIL" }
        ),
    );
    line(s, "\n## Details\n");
    for (what, v) in [
        ("shim, one container, to running", &m.shim_running),
        ("shim, one container, to the state", &m.shim_visible),
        ("docker CLI, one container", &m.cli_running),
        ("shim, batch, all running", &m.batch_shim_running),
        ("shim, batch, all in the state", &m.batch_shim_visible),
        ("docker CLI, batch", &m.batch_cli_running),
        ("health flip, to the state", &m.health_state),
        ("health flip, to docker events", &m.health_events),
        ("health flip, state minus docker events", &lag),
    ] {
        line(s, format!("- {what}: {}", summary_ms(v)));
    }
    line(
        s,
        format!(
            "- memory with {} containers running: shim {:.1} MiB, dockerd {:.1} MiB",
            plan.batch,
            m.shim_rss as f64 / 1048576.0,
            m.dockerd_rss as f64 / 1048576.0
        ),
    );
    line(s, "\n## Method\n");
    line(
        s,
        format!(
            "- A dockerd of its own (own data root, exec root, socket and network namespace), \
             the busybox-static image imported (no registry), stated in the benchmark's process \
             on a private D-Bus, and the release `dockerd-shim` binary as its own process in \
             dockerd's namespace with its normal config: the `uncloud` network on the machine's \
             subnet, firewall rules, the event mirror and `org.uncloud.Docker1`.\n\
             - Shim: `RunService` over D-Bus (create, connect to `uncloud`, start; the reply \
             comes once the container runs). \"To the state\": until stated's document shows \
             the container `running`, written by the shim's event mirror (checked on every \
             change of the document).\n\
             - Reference: `docker run -d --network uncloud --name … IMAGE sleep 600`, timed \
             until the CLI exits (the container runs by then).\n\
             - One container: {} runs each, shim and CLI alternating, each container removed \
             before the next (and gone from the state); median. Batch: {} containers requested \
             at once (concurrent D-Bus calls; concurrent CLI processes), {} batch(es) each, \
             median of the time until the last is running / in the state.\n\
             - Health: a container with a check (`test -f /tmp/ok` every 500 ms, 1 retry) \
             flipped {} times by creating and removing the file; from each flip until the state \
             shows the new verdict, and (reference) until `docker events` prints the engine's \
             `health_status` for it. Both include waiting for the next check; the difference is \
             what the shim adds.\n\
             - Memory: VmRSS of the shim and of dockerd with a batch started through the shim \
             running and mirrored, after the timed runs.",
            plan.singles, plan.batch, plan.batches, plan.health_flips
        ),
    );
    line(s, "\n## Caveats\n");
    line(
        s,
        "- The CLI's time includes starting a Go process per container; the shim's includes \
         the D-Bus round trip and the JSON spec. Both wait for the same engine work, which \
         dominates.\n\
         - \"To the state\" has no docker equivalent (docker has no replicated state): its \
         ratio says what mirroring adds on top of a plain `docker run`.\n\
         - Everything shares the same CPUs; compare ratios across machines rather than \
         absolute figures.",
    );
    line(s, "\n## Rerun and compare\n");
    line(
        s,
        "Run the command above as root on an otherwise idle machine with `docker.io`, \
         `busybox-static`, `util-linux`, `nftables` and `iptables` installed. The benchmark \
         starts its own dockerd; it does not touch a running one.",
    );
    out
}
