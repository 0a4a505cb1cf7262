//! `uc`: the command line of an Uncloud network.
//!
//! # Background
//! An Uncloud machine has no shell to log into: everything is done through apid, the TLS API
//! every machine serves on port 7443. `uc` is its client. It talks to a fresh machine by the
//! key fingerprint on the machine's console, and to a network through a *context* (the
//! network's CA certificates, this client's certificate and key, endpoints to try).
//!
//! # Design
//! One module per command group ([`machine`], [`host`] for a machine's insides, [`mesh`],
//! [`service`] for `run`/`ls`/`ps`/`rm`, [`deploy`], [`update`] for rolling updates, [`volume`] for volumes and images, [`push`] for `uc image push`, [`exec`] for `uc exec`, [`cert`], [`ctx`]); [`targets`] asks the connected machine or each of `-m`; [`remote`]
//! connects and turns errors into advice; [`context`] keeps contexts on disk; [`output`] prints tables, JSON and
//! progress. Adding a command is a variant and a match arm.
//!
//! # Limitations
//! Ingress comes with later work.

mod cert;
mod context;
mod ctx;
mod deploy;
mod dns;
mod exec;
mod host;
mod ingress;
mod logs;
mod machine;
mod mesh;
mod output;
mod push;
mod remote;
mod service;
mod targets;
mod update;
mod volume;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Manage an Uncloud network: machines you own, one flat WireGuard mesh, no control plane.
#[derive(Debug, Parser)]
#[command(
    name = "uc",
    version,
    after_help = "\
Start here:
  uc machine init 203.0.113.10 --fingerprint sha256:… --token …   # a network of one
  uc machine add 198.51.100.7 --fingerprint sha256:… --token …    # grow it
  uc machine ls                                                   # look at it
  uc machine ls -m all                                            # as every machine sees it
  uc machine status -m all                                        # units, memory, disk
  uc machine logs -u meshd -f                                     # the journal, followed
  uc run --name web --replicas 3 nginx:1.25                       # a service on 3 machines
  uc ps                                                           # its containers, everywhere

Contexts live in $XDG_CONFIG_HOME/uncloud (or ~/.config/uncloud); UNCLOUD_CONFIG_DIR overrides."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// The context (network) to use instead of the current one.
    #[arg(long, global = true, env = "UNCLOUD_CONTEXT")]
    pub context: Option<String>,
    /// Talk to this machine of the network (`HOST[:PORT]`) instead of the context's
    /// endpoints in turn.
    #[arg(long, global = true, env = "UNCLOUD_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t)]
    pub output: output::Format,
    /// Ask these machines instead (names or ids, comma-separated, or `all`), through the
    /// connected one: one answer per machine; one that is down or across a partition is
    /// reported unreachable within seconds. For commands that show one machine's view; for
    /// `uc run`, the machines its containers may go to.
    #[arg(short = 'm', long = "machines", global = true, value_delimiter = ',')]
    pub targets: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a service: containers from one image, spread over the machines.
    #[command(after_help = "\
Examples:
  uc run --name web --replicas 3 -p app.example.com:80/https nginx:1.25
  uc run --mode global -v /var/log:/host/log:ro busybox tail -F /host/log/syslog
  uc run -m alpha,beta --name db -e POSTGRES_PASSWORD postgres:16
  uc run --project shop --name cache redis:7       # reached as `cache` from shop's containers

Containers reach each other by name: <service>.internal (all healthy containers),
lb.<service>.internal (one balanced address), <container>.<machine>.machine.internal.")]
    Run(Box<service::Run>),
    /// List the services: mode, containers running out of wanted, image, virtual address.
    #[command(
        after_help = "Examples:\n  uc ls\n  uc ls -m all      # as each machine sees it, e.g. during a partition"
    )]
    Ls,
    /// List the containers of every service: machine, state, health, address, revision. A
    /// container on a machine the connected one cannot reach shows that machine's state.
    #[command(after_help = "Examples:\n  uc ps\n  uc ps -o json")]
    Ps,
    /// Show one service as JSON: its spec as deployed (image, command, environment, ports,
    /// volumes, resources, health check, placement) and its containers.
    #[command(after_help = "Examples:\n  uc inspect web\n  uc inspect db.shop | jq .spec.env")]
    Inspect(service::Inspect),
    /// Change how many containers a replicated service has: new ones are placed as `uc run`
    /// places them; removed ones come from the machines with the most of it, newest first.
    #[command(after_help = "Examples:\n  uc scale web 5\n  uc scale db.shop 1")]
    Scale(service::Scale),
    /// Print the lines a service's containers wrote, from every machine, merged by time with
    /// each container's name in front.
    #[command(after_help = "\
Examples:
  uc logs web                      # the last 100 lines of each container of web
  uc logs -f web db.shop           # follow two services
  uc logs web/web-1a2b --since 10m # one container, the last ten minutes
  uc logs -n all -t web            # everything, with times")]
    Logs(logs::Logs),
    /// Run a command in one of a service's containers, on whichever machine runs it, with
    /// this terminal's input and output; exits with the command's exit code.
    #[command(after_help = "\
Examples:
  uc exec web                        # an interactive shell in a running container of web
  uc exec web cat /etc/hosts         # one command, its output here
  uc exec -it db.shop psql -U app    # a terminal program
  uc exec web/web-1a2b -- ls -l /    # one container; `--` before a command with dashes
  tar c site | uc exec -i web tar x -C /srv   # this computer's input to the command")]
    Exec(exec::Exec),
    /// Stop a service's containers (or one of them), each on its machine; they stay the
    /// service's, stopped, until `uc start`.
    #[command(
        after_help = "Examples:\n  uc stop web\n  uc stop web/web-1a2b -t 30   # one container, 30 s to exit"
    )]
    Stop(service::Act),
    /// Start a service's stopped containers (or one of them).
    #[command(after_help = "Examples:\n  uc start web\n  uc start db.shop")]
    Start(service::Act),
    /// Restart a service's containers (or one of them), all at once: for one at a time with
    /// a health gate, change the spec and `uc deploy`.
    #[command(after_help = "Examples:\n  uc restart web\n  uc restart web/web-1a2b")]
    Restart(service::Act),
    /// Remove services: their containers on every machine, then the service.
    #[command(
        after_help = "Examples:\n  uc rm web\n  uc rm db.shop          # `db` of project `shop`"
    )]
    Rm(service::Rm),
    /// Deploy a Compose file: create, replace and remove services until the network runs
    /// what the file says. Shows the plan and asks first.
    #[command(after_help = "\
Examples:
  uc deploy                         # compose.yaml in this folder; its .env beside it
  uc deploy -f shop/compose.yaml --dry-run
  uc deploy -y web                  # only the service web, without asking
  uc deploy -p shop-staging         # the same file as another project

The project name prefixes containers and volumes (shop_db_data) and scopes DNS: the project's
containers reach its services by their bare names (db), others as db.shop.internal. Keys that
cannot be honoured are warnings (ignored, and why) or errors (with what to do instead), each
with its line. docs/services.md lists the keys uc reads.")]
    Deploy(Box<deploy::Deploy>),
    /// Go back to an earlier revision of a service, one container at a time (as a deploy
    /// rolls out).
    #[command(after_help = "\
Examples:
  uc rollback web                 # the revision before the current
  uc rollback web --to 3          # revision 3 (see `uc service history web`)

A deploy whose new container fails goes back on its own; this is for a change that worked
but should not have.")]
    Rollback(update::Rollback),
    /// A service's revisions.
    #[command(subcommand)]
    Service(update::ServiceCmd),
    /// Named volumes, each on one machine (`-m`).
    #[command(subcommand)]
    Volume(volume::Volume),
    /// Images on the machines.
    #[command(subcommand)]
    Image(volume::Image),
    /// Create the network, add and list machines.
    #[command(subcommand)]
    Machine(machine::Machine),
    /// The WireGuard mesh: who reaches whom.
    #[command(subcommand)]
    Mesh(mesh::Mesh),
    /// Service discovery: the names each machine's DNS answers.
    #[command(subcommand)]
    Dns(dns::Dns),
    /// Ingress: the routes and certificates the ingress machines serve.
    #[command(subcommand)]
    Ingress(ingress::Ingress),
    /// Client certificates: issue, list, revoke, renew.
    #[command(subcommand)]
    Cert(cert::Cert),
    /// Contexts: the networks this client knows.
    #[command(subcommand)]
    Ctx(ctx::Ctx),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  uc completion bash > /etc/bash_completion.d/uc")]
    Completion { shell: clap_complete::Shell },
    /// Print uc's version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    use machine::Machine as M;
    let takes_machines = matches!(
        &cli.command,
        Command::Machine(M::Ls | M::Status | M::Logs { .. } | M::Reboot)
            | Command::Mesh(_)
            | Command::Dns(_)
            | Command::Ingress(_)
            | Command::Run(_)
            | Command::Ls
            | Command::Ps
            | Command::Volume(_)
            | Command::Image(_)
    );
    if !cli.global.targets.is_empty() && !takes_machines {
        anyhow::bail!(
            "-m does not apply to this command (it acts on the network, not on one machine's \
             view); it applies to: uc machine ls|status|logs|reboot, uc mesh peers, uc dns ls, uc ingress, \
             uc ls, uc ps, uc volume, uc image ls, and uc run (where the containers may go)"
        );
    }
    // A certificate near its end is renewed by whatever command uses it next.
    let uses_context = match &cli.command {
        Command::Machine(m) => !matches!(m, machine::Machine::Init { .. }),
        Command::Mesh(_)
        | Command::Dns(_)
        | Command::Ingress(_)
        | Command::Run(_)
        | Command::Ls
        | Command::Ps
        | Command::Inspect(_)
        | Command::Scale(_)
        | Command::Rm(_)
        | Command::Deploy(_)
        | Command::Rollback(_)
        | Command::Service(_)
        | Command::Stop(_)
        | Command::Logs(_)
        | Command::Exec(_)
        | Command::Volume(_)
        | Command::Image(_)
        | Command::Start(_)
        | Command::Restart(_) => true,
        Command::Cert(c) => !matches!(c, cert::Cert::Renew),
        _ => false,
    };
    if uses_context {
        cert::renew_if_due(&cli.global).await;
    }
    match cli.command {
        Command::Machine(m) => machine::run(m, &cli.global).await,
        Command::Mesh(m) => mesh::run(m, &cli.global).await,
        Command::Dns(d) => dns::run(d, &cli.global).await,
        Command::Ingress(i) => ingress::run(i, &cli.global).await,
        Command::Run(r) => service::run(*r, &cli.global).await,
        Command::Ls => service::list(&cli.global, false).await,
        Command::Ps => service::list(&cli.global, true).await,
        Command::Inspect(i) => service::inspect(i, &cli.global).await,
        Command::Scale(s) => service::scale(s, &cli.global).await,
        Command::Rm(r) => service::rm(r, &cli.global).await,
        Command::Deploy(d) => deploy::deploy(*d, &cli.global).await,
        Command::Rollback(r) => update::rollback(r, &cli.global).await,
        Command::Stop(a) => service::act(a, "stop", &cli.global).await,
        Command::Logs(l) => logs::logs(l, &cli.global).await,
        Command::Exec(e) => {
            let code = exec::exec(e, &cli.global).await?;
            // Exiting here, not through the runtime: a read of this terminal that is still
            // waiting would hold its shutdown.
            let _ = std::io::Write::flush(&mut std::io::stdout());
            std::process::exit(code.clamp(0, 255));
        }
        Command::Volume(v) => volume::volume(v, &cli.global).await,
        Command::Image(i) => volume::image(i, &cli.global).await,
        Command::Start(a) => service::act(a, "start", &cli.global).await,
        Command::Restart(a) => service::act(a, "restart", &cli.global).await,
        Command::Service(s) => update::service(s, &cli.global).await,
        Command::Cert(c) => cert::run(c, &cli.global).await,
        Command::Ctx(c) => ctx::run(c, &cli.global),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "uc", &mut std::io::stdout());
            Ok(())
        }
        Command::Version => {
            println!("uc {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn machine_names_of_a_command_are_not_taken_for_targets() {
        let cli = Cli::try_parse_from(["uc", "machine", "rm", "a", "b"]).unwrap();
        assert!(cli.global.targets.is_empty());
        let cli = Cli::try_parse_from(["uc", "machine", "ls", "-m", "alpha,bravo"]).unwrap();
        assert_eq!(cli.global.targets, ["alpha", "bravo"]);
        let cli = Cli::try_parse_from(["uc", "-m", "all", "machine", "ls"]).unwrap();
        assert_eq!(cli.global.targets, ["all"]);
    }
}
