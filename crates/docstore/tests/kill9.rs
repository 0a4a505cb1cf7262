//! An acknowledged append survives `kill -9` of the writing process at an arbitrary moment.
//!
//! The test re-runs this test binary as a child that appends (and now and then compacts) as
//! fast as it can, printing `ACK n` after each append returns; the parent SIGKILLs it mid-stream
//! and checks that every acknowledged write is in the reopened store.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
};

use common::*;
use uncloud_docstore::Store;

const CHILD_PATH: &str = "UNCLOUD_DOCSTORE_TEST_CHILD_PATH";
const CHILD_ROUND: &str = "UNCLOUD_DOCSTORE_TEST_CHILD_ROUND";

#[test]
#[ignore = "runs only as the child process of acknowledged_writes_survive_kill_9"]
fn child_writer() {
    let Some(path) = std::env::var_os(CHILD_PATH) else {
        return;
    };
    let round: u8 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let (mut w, loaded) = Writer::open(Path::new(&path), 10 + round);
    assert!(loaded.report.is_clean(), "{:?}", loaded.report);
    let mut out = std::io::stdout().lock();
    for i in 0..100_000 {
        w.put(&format!("r{round}-{i}"), "acked");
        writeln!(out, "ACK {i}").unwrap();
        out.flush().unwrap();
        if i % 40 == 39 {
            w.store.compact(&w.doc.save()).unwrap();
        }
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let exe = std::env::current_exe().unwrap();
    let mut acked_per_round = Vec::new();
    for round in 0..4u8 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_PATH, &path)
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Different kill points per round, some right around a compaction (every 40 appends).
        let target = 25 + u64::from(round) * 31;
        let mut acked = None;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            if let Some(n) = line.unwrap().strip_prefix("ACK ") {
                let n: u64 = n.parse().unwrap();
                acked = Some(n);
                if n >= target {
                    break;
                }
            }
        }
        // The child keeps appending until the SIGKILL lands, typically inside a commit.
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = acked.expect("the child acknowledged writes");
        acked_per_round.push(acked);

        let (_store, loaded) = Store::open(&path, || panic!("data was written")).unwrap();
        assert!(loaded.report.is_clean(), "{:?}", loaded.report);
        for (r, &last) in acked_per_round.iter().enumerate() {
            for i in 0..=last {
                assert_eq!(
                    get_str(&loaded.doc, &format!("r{r}-{i}")).as_deref(),
                    Some("acked"),
                    "round {r} write {i} (of {last} acknowledged) lost"
                );
            }
        }
    }
}
