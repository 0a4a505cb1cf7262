//! `stated.md`: how the run was made, on what, the results beside their targets, and caveats.

use super::{per_peer_slope, targets, HealResult, Measured, Plan};
use crate::report::{fmt_num, line, Results, Verdict};
use crate::stats::summary_ms;
use crate::sys::Machine;

pub fn render(
    plan: &Plan,
    m: &Measured,
    results: &Results,
    command: &str,
    machine: &Machine,
) -> String {
    let mut s = String::new();
    let s = &mut s;
    let g = plan.gossip_interval_ms;
    let d = stated::config::Config::default();

    line(s, "# stated benchmark\n");
    if plan.quick {
        line(
            s,
            format!(
                "**Quick smoke run** (`--quick`): small counts and {g} ms gossip. These figures \
                 are not comparable with the full run and the targets do not apply.\n"
            ),
        );
    }
    line(
        s,
        format!("Command (from the workspace root):\n\n```\n{command}\n```\n"),
    );

    line(s, "## Machine\n");
    s.push_str(&machine.markdown_list());
    line(
        s,
        format!(
            "- temp dir (redb stores, fsync on every write): {}\n",
            std::env::temp_dir().display()
        ),
    );

    results_table(s, plan, results);
    model_references(s, m, results);
    method(s, plan, &d);
    details(s, plan, m);
    mechanisms(s, m);
    caveats(s, machine);

    line(s, "\n## Rerun and compare\n");
    line(
        s,
        "Run the command above from the workspace root on an otherwise idle machine (about 30 \
         minutes on 2 CPUs; `--quick` for a smoke run into a temp dir, `--out DIR` elsewhere). \
         Compare the `ratio` columns across machines rather than absolute figures: both sides \
         ran on the same machine in the same command.",
    );
    std::mem::take(s)
}

fn results_table(s: &mut String, plan: &Plan, results: &Results) {
    let g = plan.gossip_interval_ms;
    line(s, "## Results\n");
    line(
        s,
        format!(
            "All nodes in one process on loopback; gossip interval {g} ms for stated and the \
             reference alike{}. `ratio` = stated / reference (below 1: stated is faster or \
             leaner).\n",
            if g == 1000 {
                " (stated's production default)"
            } else {
                ""
            }
        ),
    );
    line(
        s,
        "| metric | stated | reference (chitchat only) | ratio | unit | target |",
    );
    line(s, "|---|---:|---:|---:|---|---|");
    let targets = targets();
    for (name, metric) in results {
        let target = targets
            .iter()
            .find(|t| &t.metric == name)
            .map_or(String::new(), |t| {
                format!(
                    "< {} {}: **{}**",
                    fmt_num(t.below),
                    metric.unit,
                    t.verdict(results).as_str()
                )
            });
        let ratio = if metric.ratio.is_nan() {
            "n/a".to_string()
        } else {
            format!("{:.3}", metric.ratio)
        };
        line(
            s,
            format!(
                "| `{name}` | {} | {} | {ratio} | {} | {target} |",
                fmt_num(metric.value),
                fmt_num(metric.reference),
                metric.unit
            ),
        );
    }

    line(s, "\n## Targets (issues 2 and 13)\n");
    for t in &targets {
        let measured = results.get(&t.metric).map_or(String::new(), |m| {
            format!(" — measured {} {}", fmt_num(m.value), m.unit)
        });
        line(
            s,
            format!(
                "- {}: **{}**{measured}",
                t.what,
                t.verdict(results).as_str()
            ),
        );
    }
    if plan.quick
        && targets
            .iter()
            .any(|t| t.verdict(results) == Verdict::NotMeasured)
    {
        line(
            s,
            "\n(Targets are defined at 10 and 50 nodes; a quick run does not measure them.)",
        );
    }
}

fn model_references(s: &mut String, m: &Measured, results: &Results) {
    line(
        s,
        "\n## Model references (from the issue; not measured here)\n",
    );
    line(
        s,
        "- Serf's convergence model: 99.99% of 100 nodes reached in about 1 s.",
    );
    line(
        s,
        "- chitchat's own threshold: under 120 KB/s per node at 100 nodes.",
    );
    let largest = m.propagation.last().map_or(0, |p| p.0);
    if let (Some(p99), Some((n, idle, _))) = (
        results.get(&format!("propagation_p99_ms_{largest}_nodes")),
        m.idle.last(),
    ) {
        line(
            s,
            format!(
                "- Here: stated reaches all of {largest} nodes within {} ms at p99; idle traffic \
                 at {n} nodes is {:.0} B/s per node ({:.1}% of chitchat's 120 KB/s, which is \
                 stated for 100 nodes).",
                fmt_num(p99.value),
                idle.total(),
                idle.total() / 120_000.0 * 100.0
            ),
        );
    }
}

fn method(s: &mut String, plan: &Plan, d: &stated::config::Config) {
    let g = plan.gossip_interval_ms;
    line(s, "\n## How each figure is measured\n");
    line(
        s,
        format!(
            "- **Subject**: real `stated` nodes (`uncloud_testkit::cluster::Cluster`), each with its own \
             redb store in a temp dir (fsync on every acknowledged write), chitchat gossip on \
             loopback UDP and automerge sync over tarpc on loopback TCP, all links passing \
             through one `SimulatedNetwork` that can split them. Timing knobs at their \
             production defaults (`suspect_after_ms` {}, `anti_entropy_interval_ms` {}, \
             `sync_timeout_ms` {}) and `gossip_interval_ms` {g}{}. Seeds: the first three nodes.",
            d.suspect_after_ms,
            d.anti_entropy_interval_ms,
            d.sync_timeout_ms,
            if g == d.gossip_interval_ms {
                " (the default too)".to_string()
            } else {
                format!(" (the default is {}; quick run)", d.gossip_interval_ms)
            }
        ),
    );
    line(
        s,
        "- **Reference**: a plain chitchat 0.13 cluster in the same process on loopback UDP, \
         with the same node count and seeds, chitchat configured by stated's own \
         `gossip::chitchat_config` and gossiping through stated's own `FilteredTransport` over a \
         `SimulatedNetwork`, so gossip is identical on both sides. Each \
         write is a chitchat key whose value is the JSON of the same service stated writes. No \
         store, no CRDT merge, no sync protocol: what replicating the data by gossip alone costs.",
    );
    let samples: Vec<String> = plan
        .propagation
        .iter()
        .map(|(n, k)| format!("{k} at {n} nodes"))
        .collect();
    line(
        s,
        format!(
            "- **Propagation** (`propagation_p50/p99_ms_N_nodes`): the cluster is started and left \
             to settle (every machine registered, all heads equal, everyone sees everyone alive). \
             stated: one write at a time (`UpsertService`) from a random node, timed from calling \
             `mutate` on the writer until the last other node's heads contain the new change \
             (observed through each node's heads watch), with a random 50–150 ms pause between \
             writes. Reference: one key set every eighth of a gossip round at a random instant \
             within its slot, on a random node, each timed from `set` until the last node's key-change \
             listener fires; chitchat moves data only in its periodic rounds and one round \
             carries every pending key, so overlapping writes do not queue. Percentiles by \
             nearest rank (the p99 of 50 samples is their maximum). Samples: {}.",
            samples.join(", ")
        ),
    );
    let window_note = if plan.idle_window.as_millis() == u128::from(d.anti_entropy_interval_ms) {
        "The window is one anti-entropy period of stated, so every node's periodic sync round \
         is counted exactly once."
    } else {
        "The window is shorter than stated's anti-entropy period, so its periodic sync rounds \
         are undercounted (quick run)."
    };
    line(
        s,
        format!(
            "- **Idle traffic** (`idle_bytes_per_node_per_s_N_nodes`): on the same cluster, after \
             the propagation writes and 3 gossip rounds of quiet, the bytes all nodes send over \
             {:?}, divided by nodes and seconds. stated: gossip datagrams plus sync TCP bytes \
             (both counted by stated's own `Metrics`); reference: gossip datagrams. \
             {window_note} Bytes received are the same bytes seen from the other end.",
            plan.idle_window
        ),
    );
    line(
        s,
        format!(
            "- **Healed partition** (`heal_convergence_ms_N_nodes`, `heal_membership_ms_N_nodes`): \
             a fresh settled cluster of {} nodes is split 50/50 (both directions cut, gossip and \
             sync); {} writes on each side, spread over the side's nodes (stated: one writer \
             task per node, concurrently; reference: keys set on the side's nodes in turn). Then \
             we wait until each side has converged internally and every node reports every node \
             of the other side down (chitchat's failure detector declared it dead), as in a \
             partition that lasts. Timed from `heal()` until all heads are equal (reference: \
             until every node has seen all {} keys), polled every 5 ms; `membership` is the time \
             until every node sees every node alive again (polled every 50 ms). {} run(s) per \
             side and size on fresh clusters, alternating; the JSON holds the median (nearest \
             rank) with min and max of each side.",
            plan.heal_nodes
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" and "),
            plan.heal_writes_per_side,
            2 * plan.heal_writes_per_side,
            plan.heal_runs
        ),
    );
    let (cn, changes) = plan.catch_up;
    line(
        s,
        format!(
            "- **Catch-up** (`catch_up_ms_{changes}_changes`): a fresh settled cluster of {cn} \
             nodes; one node is cut off (both directions) while the other {} make {changes} \
             writes (stated: service deploys, one writer task per node, each deploy a change the \
             document keeps; reference: keys set on the nodes in turn, the same JSON as values). \
             Once the connected nodes agree, the cut is healed and timed until the node that was \
             cut off holds every write (stated: equal heads and all services; reference: it has \
             seen every key), polled every 5 ms. {} run(s) per side, alternating; median with \
             min and max.",
            cn - 1,
            plan.catch_up_runs
        ),
    );
    line(
        s,
        format!(
            "- **Resident memory** (`rss_bytes_per_node_N_nodes`): in a fresh child process (this \
             binary with `--rss-probe`), `VmRSS` from `/proc/self/status` before starting the \
             cluster and after it settled plus 3 gossip rounds and stated's connection linger \
             ({:?}, after which an idle sync connection closes); the difference divided by the \
             node count; at {} nodes. The stated document then holds the machines and nothing \
             else; the reference holds only membership. Comparing node counts separates the \
             per-peer cost from the fixed cost of a node (`memory_per_peer_bytes`: the \
             difference of per-node memory between the two sizes, per added peer). Then {} \
             container records (as dockerd-shim writes them, about 400 bytes of JSON each) are \
             written, spread over the nodes, and once every node holds them all and the same \
             quiet has passed, RSS again: `rss_bytes_per_node_per_1000_containers_N_nodes` is \
             the growth per node per 1,000 containers (reference: the same records as chitchat \
             keys).",
            stated::sync::CONNECTION_LINGER,
            plan.rss_nodes
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" and "),
            plan.rss_containers
        ),
    );
}

fn details(s: &mut String, plan: &Plan, m: &Measured) {
    line(s, "\n## Details\n");
    for (n, ours, theirs) in &m.propagation {
        line(
            s,
            format!(
                "- propagation at {n} nodes: stated {}; reference {}",
                summary_ms(ours),
                summary_ms(theirs)
            ),
        );
    }
    for (n, ours, theirs) in &m.idle {
        line(
            s,
            format!(
                "- idle at {n} nodes, per node: stated {:.0} B/s gossip + {:.0} B/s sync = {:.0} \
                 B/s; reference {:.0} B/s gossip",
                ours.gossip,
                ours.sync,
                ours.total(),
                theirs.total()
            ),
        );
    }
    for st in &m.startup {
        line(
            s,
            format!(
                "- stated start-up at {} nodes (all nodes started together): settled after \
                 {:.1} s; {} tarpc error events meanwhile (mostly sync RPCs past their deadline, \
                 after which gossip brings the next session)",
                st.nodes, st.settle_s, st.rpc_errors
            ),
        );
    }
    for (n, ours, theirs) in &m.heal {
        let show = |runs: &[HealResult]| {
            runs.iter()
                .map(|r| {
                    format!(
                        "converged {:.0} ms / all alive {:.0} ms (writes took {:.2} s, then {:.1} s \
                         until each side saw the other down)",
                        r.convergence_ms, r.membership_ms, r.write_s, r.down_wait_s
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        line(
            s,
            format!(
                "- healed partition at {n} nodes, {} writes per side, each run after heal: stated \
                 {}; reference {}",
                plan.heal_writes_per_side,
                show(ours),
                show(theirs)
            ),
        );
    }
    if let Some((n, changes, ours, theirs)) = &m.catch_up {
        let show = |v: &[f64]| {
            v.iter()
                .map(|ms| format!("{ms:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        line(
            s,
            format!(
                "- catch-up of 1 of {n} nodes after {changes} missed writes, ms per run: stated \
                 {}; reference {}",
                show(ours),
                show(theirs)
            ),
        );
    }
    for (ours, theirs) in &m.rss {
        line(
            s,
            format!(
                "- resident memory at {} nodes: stated {:.1} → {:.1} MiB, then {:.1} MiB with {} \
                 containers; reference {:.1} → {:.1} MiB, then {:.1} MiB",
                ours.nodes,
                mib(ours.before),
                mib(ours.after),
                mib(ours.with_containers),
                ours.containers,
                mib(theirs.before),
                mib(theirs.after),
                mib(theirs.with_containers)
            ),
        );
    }
}

/// What in stated's design drives each figure (from its code), with the per-peer memory slope.
fn mechanisms(s: &mut String, m: &Measured) {
    line(s, "\n## What drives the figures\n");
    line(
        s,
        "- Propagation: stated pushes a local write to every live peer at once (`Peers::push_all` \
         from `after_change`), one automerge sync session (2–4 RPC round trips) per peer, so the \
         writer runs n−1 sessions per write, at most 4 of them exchanging at once (session \
         slots); with every node on the same 2 CPUs these queue on CPU at 50 nodes. The \
         reference moves data only in gossip rounds, one round per hop.",
    );
    line(
        s,
        "- Healed partition: every machine that gossips a sync address has a sync worker, but \
         only live ones are pushed to. After the heal, the first gossip exchange across the old \
         cut carries heads that are new since the last round and unknown locally; that wakes the \
         worker for that machine at once (`observe_loop` in `gossip.rs`), before chitchat has \
         seen the two fresh heartbeats it needs to call the machine live again. Changes a node \
         merged from a peer are not pushed on (`after_change(.., local = false)`); the rest of \
         its side pulls them once gossip shows its new heads, about one more round. What \
         bounds the figure at 50 nodes is how many times the same 1,000 changes are generated \
         and merged: about 30 ms of CPU per copy, and the minimum is one copy per node. Before \
         session slots (at most 4 sessions of a node exchanging at once), no blind retries and \
         no session on a peer's return from the dead, a 50-node heal moved about 600 copies \
         (7.7–10 s); now about 70. The reference's data rides on the gossip exchanges \
         themselves. Why an earlier figure did \
         not reproduce on a slower machine (converged 2.7–3.4 s after the heal where 0.6 s was \
         published): every half gossip round each node checked, for each peer, whether it held \
         that peer's heads with automerge's `get_change_by_hash`, which rebuilds the whole \
         change from the op set. After 1000 writes per side that check, under the document \
         lock, became the largest CPU cost of a node and held up the very sync sessions it \
         triggered; the slower the CPU, the longer. It is now a lookup in the change graph \
         (`get_missing_deps`); the same fix cut a catch-up in stated's tests from 16.7 s to \
         3 s.",
    );
    line(
        s,
        "- Idle traffic: stated's gossip is chitchat carrying two small keys (`sync`, `heads`) that \
         change only on writes, so it stays close to the reference; on top, every node runs an \
         anti-entropy sync session with every live peer each `anti_entropy_interval_ms`, so the \
         sync part per node grows linearly with the node count.",
    );
    if let (Some((ours, theirs)), [(a, _), .., (b, _)]) = (per_peer_slope(&m.rss), m.rss.as_slice())
    {
        line(
            s,
            format!(
                "- Memory: per node, stated holds {:.1} MiB at {} nodes and {:.1} MiB at {} \
                 nodes, about {:.0} KiB more per additional peer (reference: {:.1} KiB). A \
                 stated node keeps, per peer, a sync worker task, an automerge sync state on \
                 both ends and chitchat's view of it; a sync connection (tarpc with framing \
                 buffers and tasks on both ends) is open only during sessions and for {:?} \
                 after (it used to stay open for good: about 118 KiB per peer). Containers live \
                 in per-machine tables outside the automerge document (decision 0014), one \
                 record per container with no history.",
                a.per_node() / 1_048_576.0,
                a.nodes,
                b.per_node() / 1_048_576.0,
                b.nodes,
                ours / 1024.0,
                theirs / 1024.0,
                stated::sync::CONNECTION_LINGER
            ),
        );
    }
}

fn caveats(s: &mut String, machine: &Machine) {
    line(s, "\n## Caveats\n");
    line(
        s,
        format!(
            "- All nodes share this machine's {} CPUs, so at 50 nodes latencies include CPU \
             contention and scheduling that separate machines would not have; in turn loopback \
             has no network latency or loss. Per-node memory includes tokio tasks, connection \
             buffers, redb's cache and malloc overhead, but not the process, runtime and binary a real \
             machine would carry once per node.",
            machine.cpus
        ),
    );
    line(
        s,
        "- The reference is a floor, not a competitor: it keeps nothing on disk, merges nothing \
         and has no push path, so its propagation is bounded by gossip rounds while stated \
         pushes each write at once.",
    );
    line(
        s,
        "- The healed partition is held until each side has declared the other dead, the slower \
         case for stated (see above); a partition healed before that converges the same way, \
         through pulls once gossip shows the other side's heads. The figure depends on where \
         the heal falls \
         within the gossip rounds, hence several runs and their median.",
    );
    line(
        s,
        "- stated's observers are tokio tasks woken by a heads watch, which adds the wake-up \
         latency of a busy runtime; the reference's times come from inside chitchat's \
         key-change listener.",
    );
    line(
        s,
        "- A write counts as visible when it is in a node's document; the writer's `mutate` \
         also waits for its own fsync, receivers persist asynchronously (the writer still \
         holds the change if a receiver crashes first).",
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}
