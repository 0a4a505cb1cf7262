//! The `ingressd` daemon: see the crate docs and README.

fn main() -> std::process::ExitCode {
    ingressd::cli::main()
}
