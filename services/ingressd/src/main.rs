//! The `ingressd` daemon: see the crate docs and README.

fn main() -> std::process::ExitCode {
    ingressd::command::main(std::env::args_os())
}
