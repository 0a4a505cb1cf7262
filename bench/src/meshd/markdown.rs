//! `meshd.md`: how the run was made, on what, and the figures beside their references.

use super::{Measured, Plan};
use crate::report::{fmt_num, line, Results};
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
    line(s, "# meshd benchmark\n");
    if plan.quick {
        line(
            s,
            "**Quick smoke run** (`--quick`): short runs; not comparable with the full run.\n",
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
        format!("- reference: Debian's wireguard-go {}\n", m.wg_go_version),
    );

    line(s, "## Results\n");
    line(
        s,
        "`ratio` = meshd / reference. For throughput above 1 is better; for latency, CPU and \
         memory below 1 is better.\n",
    );
    line(s, "| metric | meshd | reference | ratio | unit |");
    line(s, "|---|---:|---:|---:|---|");
    for (name, r) in results {
        let reference = if name.contains("vs_veth") {
            "veth"
        } else {
            "wireguard-go"
        };
        let (value_label, ref_label) = if name.starts_with("wireguard_go") {
            ("wireguard-go", "veth")
        } else {
            ("meshd", reference)
        };
        line(
            s,
            format!(
                "| `{name}` | {} ({value_label}) | {} ({ref_label}) | {:.3} | {} |",
                fmt_num(r.value),
                fmt_num(r.reference),
                r.ratio,
                r.unit
            ),
        );
    }
    let target = results
        .get("tcp_throughput_mbit_s")
        .map(|r| r.ratio >= 1.0)
        .unwrap_or(false);
    line(
        s,
        format!(
            "\nTarget: meshd at least as fast as wireguard-go (throughput ratio >= 1): **{}**\n",
            if target { "PASS" } else { "FAIL" }
        ),
    );

    line(s, "## Details\n");
    for (name, f) in [
        ("veth", &m.veth),
        ("meshd", &m.meshd),
        ("wireguard-go", &m.wg_go),
    ] {
        let runs: Vec<String> = f.mbit_s.iter().map(|v| format!("{v:.0}")).collect();
        line(
            s,
            format!(
                "- {name}: iperf3 runs {} Mbit/s; ping avg {:.3} ms, max {:.3} ms",
                runs.join(", "),
                f.latency_avg_ms,
                f.latency_max_ms
            ),
        );
    }
    line(
        s,
        format!(
            "- TUN MTU: meshd {} (egress 1500 minus 88: WireGuard over IPv6 plus the relay header), wireguard-go {} (its default)",
            m.mtu_meshd, m.mtu_wg_go
        ),
    );

    line(s, "\n## Method\n");
    line(
        s,
        format!(
            "- Two network namespaces (`192.0.2.1`, `192.0.2.2`) joined by veth pairs through a \
             bridge in a third; all created and removed by the benchmark.\n\
             - Each path in turn, in the same namespaces: the bridge itself (veth), meshd \
             (`10.210.X.1`, peers from stated over D-Bus, firewall table loaded, the real \
             daemon as in production), wireguard-go (interface `wgref-*`, UDP 51821, configured \
             with `wg set`).\n\
             - Latency: `ping -c {} -i 0.01`, average round trip.\n\
             - Throughput: `iperf3 -t {}` (one TCP stream), {} run(s) per path, median. CPU: \
             user + system seconds of both tunnel daemons during the run, per GB received \
             (iperf3's own CPU not counted).\n\
             - Memory: VmRSS of one meshd with N peers taken from the state (each with an \
             endpoint that never answers, so it keeps retrying), 5 s after all are configured; \
             the same for wireguard-go with the same N peers set with `wg setconf`.",
            plan.pings, plan.seconds, plan.repeats
        ),
    );
    line(s, "\n## Caveats\n");
    line(
        s,
        "- Both ends, iperf3 and the daemons share the same CPUs; on 2 CPUs the figures are \
         CPU-bound, which is what the comparison is about.\n\
         - Debian 12's wireguard-go (2022) predates its TUN offloads (GSO/GRO); newer builds \
         are faster. gotatun likewise reads the TUN one packet at a time.\n\
         - meshd's memory includes its D-Bus connection and tokio runtime.",
    );
    line(s, "\n## Rerun and compare\n");
    line(
        s,
        "Run the command above as root (namespaces, TUN devices) on an otherwise idle machine \
         with `iperf3`, `wireguard-go`, `wireguard-tools`, `iputils-ping` and `nftables` \
         installed. Compare ratios across machines rather than absolute figures.",
    );
    out
}
