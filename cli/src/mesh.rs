//! `uc mesh …`: the WireGuard mesh as each machine sees it.

use clap::Subcommand;
use uncloud_api::host::MeshPeer;
use uncloud_api::wire::{Answer, Call};

use crate::output::{self, Format};
use crate::targets::{self, unexpected};
use crate::Global;

#[derive(Debug, Subcommand)]
pub enum Mesh {
    /// Who the connected machine (with `-m`, each machine) reaches: direct or relayed, the
    /// endpoint in use, the last handshake, bytes received and sent.
    #[command(
        after_help = "Examples:\n  uc mesh peers\n  uc mesh peers -m all      # who reaches whom, e.g. to find a NAT that needs the relay"
    )]
    Peers,
}

pub async fn run(cmd: Mesh, g: &Global) -> anyhow::Result<()> {
    match cmd {
        Mesh::Peers => {
            let replies = targets::ask(g, Call::MeshPeers, 3).await?;
            if g.output == Format::Json {
                print!("{}", output::json(&replies));
                return targets::each(&replies, |_, _, _| Ok(()));
            }
            targets::each(&replies, |machine, answer, several| {
                let Answer::MeshPeers(peers) = answer else {
                    return Err(unexpected(machine));
                };
                if several {
                    println!("seen from {machine}:");
                }
                print!("{}", peers_table(peers));
                Ok(())
            })
        }
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

pub fn peers_table(peers: &[MeshPeer]) -> String {
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.status.clone(),
                if p.relay.is_empty() {
                    p.path.clone()
                } else {
                    format!("{} via {}", p.path, p.relay)
                },
                p.endpoint.clone(),
                match p.last_handshake_secs {
                    s if s < 0 => "never".into(),
                    s => format!("{s} s ago"),
                },
                bytes(p.rx_bytes),
                bytes(p.tx_bytes),
            ]
        })
        .collect();
    output::table(
        &[
            "PEER",
            "STATUS",
            "PATH",
            "ENDPOINT",
            "HANDSHAKE",
            "RX",
            "TX",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_peer_names_its_relay_and_a_silent_one_says_never() {
        let t = peers_table(&[
            MeshPeer {
                name: "bravo".into(),
                status: "up".into(),
                path: "relayed".into(),
                relay: "alpha".into(),
                last_handshake_secs: 12,
                rx_bytes: 3 << 20,
                ..Default::default()
            },
            MeshPeer {
                name: "gamma".into(),
                status: "connecting".into(),
                path: "direct".into(),
                last_handshake_secs: -1,
                ..Default::default()
            },
        ]);
        assert!(
            t.contains("relayed via alpha") && t.contains("12 s ago"),
            "{t}"
        );
        assert!(t.contains("3.0 MiB") && t.contains("never"), "{t}");
    }
}
