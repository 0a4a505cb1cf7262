//! `uc image push IMAGE`: an image from this computer's Docker to the machines, through the
//! connected one, without a registry: `docker save` in chunks to `push_chunk`, which apid
//! passes on to every target at once; each engine loads it only once it is whole.

use std::io::{IsTerminal as _, Write as _};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use uncloud_api::image::{PushBegin, PushChunk, PushProgress, PushRef, PUSH_CHUNK_BYTES};
use uncloud_api::wire::{Answer, Call, FanOut};

use crate::context::Store;
use crate::remote::{self, answer};
use crate::Global;

/// The API version that knows `push_*`.
pub const PUSH_API: u32 = 7;

/// How long the engines get to load the image once it is all there.
const LOAD_TIMEOUT: Duration = Duration::from_secs(660);

/// The image's id and size in this computer's Docker.
fn local_image(image: &str) -> anyhow::Result<(String, u64)> {
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}} {{.Size}}", image])
        .output()
        .context("cannot run docker (is the docker CLI installed here?)")?;
    if !out.status.success() {
        bail!(
            "{image} is not in this computer's Docker (`docker pull {image}` or build it first): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let id = parts.next().unwrap_or_default().to_string();
    let size = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((id, size))
}

/// One line per machine: bytes taken out of the total, or how it ended. Pure.
fn render(p: &PushProgress, total: u64, done: bool) -> String {
    let width = p
        .machines
        .iter()
        .map(|m| m.machine.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for m in &p.machines {
        let state = if !m.error.is_empty() {
            format!("failed: {}", m.error)
        } else if done {
            format!("loaded {}", m.loaded.join(", "))
        } else {
            let pct = (m.bytes * 100).checked_div(total).unwrap_or(0).min(99);
            let bar = "#".repeat((pct / 5) as usize) + &"-".repeat(20 - (pct / 5) as usize);
            format!(
                "[{bar}] {:>6.1} MB{}",
                m.bytes as f64 / 1e6,
                if total > 0 {
                    format!(" of {:.1} MB", total as f64 / 1e6)
                } else {
                    String::new()
                }
            )
        };
        out.push_str(&format!("{:<width$}  {state}\n", m.machine));
    }
    out
}

pub async fn push(image: String, g: &Global) -> anyhow::Result<()> {
    let (id, size) = local_image(&image)?;
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, PUSH_API).await?;
    let targets = if g.targets.is_empty() {
        vec!["all".to_string()]
    } else {
        g.targets.clone()
    };
    // Machines that have this very image already are skipped.
    let have = answer(
        member
            .fan_out(
                remote::ctx(),
                FanOut {
                    targets,
                    call: Call::Images,
                },
            )
            .await,
    )?;
    let mut send_to = Vec::new();
    let mut unreachable = 0;
    for r in have {
        match (r.answer, r.error) {
            (Some(Answer::Images(list)), _) if list.iter().any(|i| i.id == id) => {
                eprintln!("{}: has {image} already", r.machine)
            }
            (Some(_), _) => send_to.push(r.machine),
            (None, e) => {
                unreachable += 1;
                eprintln!(
                    "warning: {}: {}",
                    r.machine,
                    e.map_or_else(|| "no answer".to_string(), |e| e.to_string())
                );
            }
        }
    }
    if send_to.is_empty() {
        if unreachable > 0 {
            bail!("no machine that lacks {image} could be reached");
        }
        eprintln!("every machine has {image} already");
        return Ok(());
    }

    let started = answer(
        member
            .push_begin(
                remote::ctx(),
                PushBegin {
                    machines: send_to,
                    image: image.clone(),
                    size,
                },
            )
            .await,
    )?;
    for f in &started.failed {
        eprintln!("warning: {}: {}", f.machine, f.error);
    }
    let upload = started.upload;
    let abort = || async {
        let _ = member.push_abort(remote::ctx(), PushRef { upload }).await;
    };
    let mut save = tokio::process::Command::new("docker")
        .args(["save", &image])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run docker save")?;
    let mut tar = save.stdout.take().expect("piped");
    let terminal = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut buf = vec![0u8; PUSH_CHUNK_BYTES];
    let mut offset = 0u64;
    let mut shown_lines = 0;
    let mut last_shown = Instant::now() - Duration::from_secs(10);
    // Ctrl-C (or a TERM) at any point, even mid-chunk, drops the upload everywhere.
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let send = async {
        loop {
            let mut n = 0;
            while n < buf.len() {
                let got = tar
                    .read(&mut buf[n..])
                    .await
                    .context("reading docker save")?;
                if got == 0 {
                    break;
                }
                n += got;
            }
            if n == 0 {
                break;
            }
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
            let p = answer(
                member
                    .push_chunk(
                        remote::ctx(),
                        PushChunk {
                            upload,
                            offset,
                            data,
                        },
                    )
                    .await,
            )?;
            offset += n as u64;
            if terminal {
                // Redraw the lines in place.
                let text = render(&p, size, false);
                eprint!("{}{text}", "\x1b[1A\x1b[2K".repeat(shown_lines));
                shown_lines = text.lines().count();
            } else if last_shown.elapsed() > Duration::from_secs(5) {
                eprint!("{}", render(&p, size, false));
                last_shown = Instant::now();
            }
        }
        let status = save.wait().await.context("docker save")?;
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = save.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            bail!("docker save {image} failed: {}", err.trim());
        }
        Ok(())
    };
    let result: anyhow::Result<()> = tokio::select! {
        r = send => r,
        _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
    };
    if let Err(e) = result {
        abort().await;
        bail!("{e:#}: nothing was loaded anywhere; run the same command again to push {image}");
    }
    eprintln!(
        "sent {:.1} MB in {:.1} s; the machines load it…",
        offset as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    let _ = std::io::stderr().flush();
    let end = answer(
        member
            .push_end(uncloud_api::context(LOAD_TIMEOUT), PushRef { upload })
            .await,
    )?;
    print!("{}", render(&end, size, true));
    let failed = end.machines.iter().filter(|m| !m.error.is_empty()).count();
    if failed > 0 || !started.failed.is_empty() || unreachable > 0 {
        bail!(
            "{image} is not on every machine asked: run the same command again (machines that \
             have it are skipped)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_api::image::MachinePush;

    #[test]
    fn progress_shows_each_machine_and_how_it_ended() {
        let p = PushProgress {
            machines: vec![
                MachinePush {
                    machine: "alpha".into(),
                    bytes: 50_000_000,
                    ..Default::default()
                },
                MachinePush {
                    machine: "b".into(),
                    bytes: 1_000,
                    error: "its shim: connection reset".into(),
                    ..Default::default()
                },
            ],
        };
        let text = render(&p, 100_000_000, false);
        assert!(
            text.contains("alpha  [##########----------]   50.0 MB of 100.0 MB"),
            "{text}"
        );
        assert!(text.contains("b      failed: its shim"), "{text}");
        let mut end = p.clone();
        end.machines[0].loaded = vec!["app:1".into()];
        assert!(render(&end, 0, true).contains("alpha  loaded app:1"));
    }
}
