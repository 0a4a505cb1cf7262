//! `uncloud-up`: a local Uncloud network on this host, formed with `uc` as a user forms one,
//! kept running until SIGTERM or Ctrl-C. `./scripts/up` builds everything and runs it in the
//! background; `./scripts/up --down` stops it.
//!
//! Machines are network namespaces on an "internet" bridge (198.18.0.0/24) that this host is
//! plugged into as 198.18.0.1, each running the real firstboot, stated, meshd, dnsd and apid. The
//! first is initialised with `uc machine init`, the second added with `uc machine add`, the
//! rest join by themselves with a ticket from `uc machine token` pre-seeded before they boot.
//! Each machine runs its own dockerd; with `--demo FILE`, a Compose project is deployed on it
//! once the network is up (its image made on every machine from busybox, no registry).
//! The first machine has the `ingress` role, and a test ACME CA (pebble, on the same internet as
//! 198.18.0.3) stands in for Let's Encrypt: the demo's hostname `demo.uncloud.test` gets a
//! certificate from it, and its root is written where `--ca-file` says, for `curl --cacert`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use uncloud_testkit::network::{public_ip, Binaries, Boot, LocalNetwork, INTERNET_PREFIX};
use uncloud_testkit::pebble::Pebble;
use uncloud_testkit::up::HOST as DEMO_HOST;

#[derive(Debug, Parser)]
#[command(about = "A local Uncloud network of machines as network namespaces (needs root)")]
struct Args {
    /// Where the Uncloud binaries are (a cargo target's `debug` directory).
    #[arg(long)]
    bin_dir: PathBuf,
    /// How many machines (1 to 20).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    machines: u8,
    /// The `uc` context to (re)create for it.
    #[arg(long, default_value = "local")]
    context: String,
    /// A file written once the network is up (scripts wait for it).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// A Compose file to deploy once the network is up (`examples/demo/compose.yaml`); its
    /// image, `uncloud/demo:1`, is made on every machine.
    #[arg(long)]
    demo: Option<PathBuf>,
    /// Where to write the test CA's root (PEM) once the demo's certificate is issued.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

const NAMES: [&str; 20] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon",
];

fn uc<S: AsRef<str>>(bins: &Binaries, args: &[S]) -> Result<String, String> {
    let out = Command::new(bins.get("uc"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .map_err(|e| format!("cannot run uc: {e}"))?;
    uncloud_testkit::network::stdout_or_error("uc", args, &out)
}

fn main() {
    if let Err(e) = run() {
        // The network was dropped (removed) on the way out.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args = Args::parse();
    uncloud_testkit::up::require_root("uncloud-up")?;
    // Before any thread starts, so the wait at the end receives them.
    let stop = uncloud_testkit::up::block_stop_signals();

    let started = Instant::now();
    let bins = Binaries { dir: args.bin_dir };
    let mut net = LocalNetwork::new(bins.clone());
    net.internet
        .attach_host("uncloud-up0", &format!("{INTERNET_PREFIX}.1/24"));
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    step("starting a test ACME CA (pebble) for ingress certificates");
    let pebble = Pebble::start(&net.internet);
    net.ingressd_config = pebble.ingressd_toml(&pebble.roots().to_string_lossy());

    let names = &NAMES[..args.machines as usize];
    step(&format!("booting {} (fresh)", names[0]));
    let docker = Boot {
        docker: true,
        ..Boot::default()
    };
    let first = net.boot_with(names[0], docker);
    // Forget an older context of the same name: it pointed at a network that is gone.
    let _ = uc(&bins, &["ctx", "rm", &args.context]);
    let mut init = net.machines[first].enrol("init");
    init.extend(["--new-context".to_string(), args.context.clone()]);
    step(&format!("uc machine init {}", net.machines[first].api()));
    uc(&bins, &init)?;
    let ctx = ["--context", args.context.as_str()];
    if names.len() > 1 {
        step(&format!("booting {} (fresh)", names[1]));
        let i = net.boot_with(names[1], docker);
        step(&format!("uc machine add {}", net.machines[i].api()));
        let mut a = net.machines[i].enrol("add");
        a.extend(ctx.map(String::from));
        uc(&bins, &a)?;
    }
    for name in names.iter().skip(2) {
        let mut a = vec!["machine", "token", "--ttl", "1h", "--name", name];
        a.extend(ctx);
        let ticket = uc(&bins, &a)?;
        step(&format!("booting {name} with a pre-seeded ticket"));
        net.boot_with(
            name,
            Boot {
                ticket: Some(ticket.trim()),
                ..docker
            },
        );
    }
    step("waiting until every machine sees every other alive");
    let ids: Vec<String> = net.machines.iter().map(|m| m.machine_id()).collect();
    net.wait_until("every machine alive", 120, || {
        net.machines
            .iter()
            .all(|m| ids.iter().all(|id| m.sees_alive(id)))
    });
    let mut role = vec!["machine", "role", "add", names[0], "ingress"];
    role.extend(ctx);
    step(&format!("uc machine role add {} ingress", names[0]));
    uc(&bins, &role)?;
    pebble.resolve(DEMO_HOST, &[public_ip(first)]);
    let mut ls = vec!["machine", "ls"];
    ls.extend(ctx);
    print!("{}", uc(&bins, &ls)?);
    if let Some(file) = &args.demo {
        let entrypoint = uncloud_testkit::up::entrypoint();
        for m in &net.machines {
            if let Some(d) = &m.docker {
                d.import_busybox_with(uncloud_testkit::up::IMAGE, &[&entrypoint]);
            }
        }
        let file = file.to_string_lossy();
        step(&format!("uc deploy -f {file} -y"));
        let mut deploy = vec!["deploy", "-f", &file, "-y"];
        deploy.extend(ctx);
        print!("{}", uc(&bins, &deploy)?);
        step("the demo answers on port 8080 of every machine:");
        for i in 0..net.machines.len() {
            eprintln!("  curl http://{}:8080/", public_ip(i));
        }
        step(&format!(
            "waiting for {DEMO_HOST}'s certificate from the test CA"
        ));
        let issued = || {
            let (ok, out, _) = net.machines[first].busctl(&[
                "call",
                "org.uncloud.Ingress1",
                "/org/uncloud/Ingress1",
                "org.uncloud.Ingress1",
                "Certificates",
            ]);
            ok && out.contains("\\\"status\\\":\\\"issued\\\"")
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(90);
        while !issued() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        if !issued() {
            return Err(format!(
                "{DEMO_HOST} got no certificate within 90 s\n{}\n{}",
                pebble.logs(),
                net.machines[first].logs()
            ));
        }
        let ca = args
            .ca_file
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("uncloud-up-ca.pem"));
        std::fs::write(&ca, pebble.issuing_root()).map_err(|e| format!("{}: {e}", ca.display()))?;
        step(&format!(
            "and over HTTPS through the ingress machine {}:",
            names[0]
        ));
        eprintln!(
            "  curl --cacert {} --resolve {DEMO_HOST}:443:{} https://{DEMO_HOST}/",
            ca.display(),
            public_ip(first)
        );
    }
    for m in &net.machines {
        eprintln!(
            "  {:<8} {}  busctl --address={}  ip netns exec {} …",
            m.name,
            m.api(),
            m.bus.address,
            m.ns.name()
        );
    }
    step(&format!(
        "up. Context {:?} is current: try `uc machine ls`. Stop with ./scripts/up --down",
        args.context
    ));
    if let Some(f) = &args.ready_file {
        let _ = std::fs::write(f, format!("{}\n", std::process::id()));
    }
    let _ = stop.wait();
    eprintln!("stopping the local network");
    drop(net);
    drop(pebble);
    if let Some(f) = &args.ready_file {
        let _ = std::fs::remove_file(f);
    }
    eprintln!("stopped and removed");
    Ok(())
}
