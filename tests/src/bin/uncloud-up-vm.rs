//! `uncloud-up-vm`: a local Uncloud network of QEMU VMs booted from the built amd64 image,
//! formed with `uc` as a user forms one, kept running until SIGTERM or Ctrl-C.
//! `./scripts/up --vm` builds what it needs and runs it in the background; `./scripts/up
//! --down` stops it.
//!
//! The VMs share one Ethernet segment (a bridge in a network namespace, 198.18.0.0/24) that
//! this host is plugged into as 198.18.0.1, the same addresses `./scripts/up` gives its
//! namespace machines: the first VM is 198.18.0.10. Each makes its own setup token at first
//! boot and shows it on its console; the first is initialised with the command its console
//! shows, the others added with theirs. The first has the ingress role, and a test ACME CA (pebble, on the same
//! segment) stands in for Let's Encrypt. With `--demo FILE`, the demo image is made in a
//! Docker of this tool's own, pushed with `uc image push`, and the project deployed.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use uncloud_e2e::network::{Lan, Node};
use uncloud_qemu::seed::write_files;
use uncloud_testkit::pebble::Pebble;
use uncloud_testkit::up::{self, HOST as DEMO_HOST};
use uncloud_testkit::Dockerd;

#[derive(Debug, Parser)]
#[command(about = "A local Uncloud network of QEMU VMs from the built image (needs root)")]
struct Args {
    /// How many VMs (1 to 5; each takes a vCPU and 1.5 GiB).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    machines: u8,
    /// The `uc` context to (re)create for it.
    #[arg(long, default_value = "local")]
    context: String,
    /// A file written once the network is up (scripts wait for it).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// A Compose file to deploy once the network is up (`examples/demo/compose.yaml`); its
    /// image, `uncloud/demo:1`, is made here and pushed to the VMs.
    #[arg(long)]
    demo: Option<PathBuf>,
    /// Where to write the test CA's root (PEM) once the demo's certificate is issued.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

const NAMES: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// `uc ARGS` on this host, with the caller's configuration (its contexts).
fn uc(args: &[&str], docker_host: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(uncloud_e2e::uc::uc_binary());
    cmd.args(args);
    if let Some(h) = docker_host {
        cmd.env("DOCKER_HOST", h);
    }
    let out = cmd.output().map_err(|e| format!("cannot run uc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "uc {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run() -> Result<(), String> {
    let args = Args::parse();
    up::require_root("uncloud-up-vm")?;
    // Before any thread starts, so the wait at the end receives them.
    let stop = up::block_stop_signals();

    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    let lan = Lan::new();
    lan.internet.attach_host("uncloud-vm0", "198.18.0.1/24");
    step("starting a test ACME CA (pebble) for ingress certificates");
    let pebble = Pebble::start(&lan.internet);
    let acme_roots = std::fs::read_to_string(pebble.roots()).map_err(|e| e.to_string())?;
    let ingressd_toml = pebble.ingressd_toml("/etc/uncloud/acme-roots.pem");
    let names = &NAMES[..args.machines as usize];
    step(&format!(
        "booting {} VMs from the image (under emulation: a minute or two)",
        names.len()
    ));
    // The first one's user-data points its ingressd at the test CA; every machine makes its
    // own setup token and shows it with the command to run.
    let mut nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let user_data = if i == 0 {
                write_files(&[
                    ("/etc/uncloud/acme-roots.pem", &acme_roots, "0644"),
                    ("/etc/uncloud/ingressd.toml", &ingressd_toml, "0644"),
                ])
            } else {
                String::new()
            };
            let address = std::net::Ipv4Addr::new(198, 18, 0, 10 + i as u8);
            lan.boot(name, address, &user_data)
        })
        .collect();
    let banners: Vec<_> = nodes.iter_mut().map(|n| n.wait_for_banner()).collect();
    // Formed inside a closure so that the consoles are saved however it ends.
    let formed = (|| -> Result<(), String> {
        // Forget an older context of the same name: it pointed at a network that is gone.
        let _ = uc(&["ctx", "rm", &args.context], None);
        for (i, banner) in banners.iter().enumerate() {
            let verb = if i == 0 { "init" } else { "add" };
            let mut words = banner
                .command(verb)
                .ok_or_else(|| format!("{}'s banner shows no command", names[i]))?;
            let flag = if i == 0 { "--new-context" } else { "--context" };
            words.extend([flag.to_string(), args.context.clone()]);
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            step(&format!("uc {}", words.join(" ")));
            uc(&words, None)?;
        }
        step("uc machine role add alpha ingress");
        uc(
            &[
                "machine",
                "role",
                "add",
                names[0],
                "ingress",
                "--context",
                &args.context,
            ],
            None,
        )?;
        pebble.resolve(DEMO_HOST, &[nodes[0].address]);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let rows = uc(
                &["machine", "ls", "-o", "json", "--context", &args.context],
                None,
            )?;
            if rows.matches("\"alive\"").count() == names.len() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("not every machine alive within 300 s:\n{rows}"));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        print!(
            "{}",
            uc(&["machine", "ls", "--context", &args.context], None)?
        );
        if let Some(file) = &args.demo {
            step("making the demo image and pushing it (uc image push)");
            let docker = Dockerd::start();
            docker.import_busybox_with(up::IMAGE, &[&up::entrypoint()]);
            let host = docker.host();
            // A machine just added may still be starting its dockerd-shim (`uc` then says so
            // and loads nothing anywhere): push again, as `uc` suggests, a few times.
            let push = ["image", "push", up::IMAGE, "--context", &args.context];
            let mut tries = 0;
            let pushed = loop {
                tries += 1;
                match uc(&push, Some(&host)) {
                    Ok(out) => break out,
                    Err(e) if tries < 10 => {
                        step(&format!("not yet ({e}); again in 5 s"));
                        std::thread::sleep(Duration::from_secs(5));
                    }
                    Err(e) => return Err(e),
                }
            };
            print!("{pushed}");
            drop(docker);
            let file = file.to_string_lossy();
            step(&format!("uc deploy -f {file} -y"));
            print!(
                "{}",
                uc(
                    &["deploy", "-f", &file, "-y", "--context", &args.context],
                    None
                )?
            );
            step(&format!(
                "waiting for {DEMO_HOST}'s certificate from the test CA"
            ));
            let deadline = Instant::now() + Duration::from_secs(300);
            while !uc(&["ingress", "certs", "--context", &args.context], None)?
                .lines()
                .any(|l| l.contains(DEMO_HOST) && l.contains("issued"))
            {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{DEMO_HOST} got no certificate within 300 s\n{}",
                        pebble.logs()
                    ));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            let ca = args
                .ca_file
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("uncloud-up-ca.pem"));
            std::fs::write(&ca, pebble.issuing_root())
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            step("the demo answers on port 8080 of every VM, and over HTTPS through alpha:");
            for n in &nodes {
                eprintln!("  curl http://{}:8080/", n.address);
            }
            eprintln!(
                "  curl --cacert {} --resolve {DEMO_HOST}:443:{} https://{DEMO_HOST}/",
                ca.display(),
                nodes[0].address
            );
        }
        Ok(())
    })();
    let logs = uncloud_qemu::vm::logs_dir();
    for n in &nodes {
        let _ = n.vm.save_console(&logs);
    }
    formed.map_err(|e| format!("{e}\n(the VMs' consoles are in {})", logs.display()))?;
    for n in &nodes {
        eprintln!("  {:<8} {}", n.name, n.endpoint());
    }
    eprintln!(
        "  their consoles up to now are in {} (saved again when they stop)",
        logs.display()
    );
    step(&format!(
        "up. Context {:?} is current: try `uc machine ls`. Stop with ./scripts/up --down",
        args.context
    ));
    if let Some(f) = &args.ready_file {
        let _ = std::fs::write(f, format!("{}\n", std::process::id()));
    }
    let _ = stop.wait();
    eprintln!("stopping the VMs");
    for n in &nodes {
        let _ = n.vm.save_console(&logs);
    }
    drop(nodes);
    drop(pebble);
    drop(lan);
    if let Some(f) = &args.ready_file {
        let _ = std::fs::remove_file(f);
    }
    eprintln!("stopped and removed");
    Ok(())
}
