//! The `apid` daemon: see the crate docs and README.

fn main() -> std::process::ExitCode {
    apid::cli::main()
}
