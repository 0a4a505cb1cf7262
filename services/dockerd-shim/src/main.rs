//! The `dockerd-shim` daemon: see the crate docs and README.

fn main() -> std::process::ExitCode {
    dockerd_shim::cli::main()
}
