//! The `dockerd-shim` daemon: see the crate docs and README.

fn main() -> std::process::ExitCode {
    dockerd_shim::command::main(std::env::args_os())
}
