//! The `dnsd` daemon: see the crate docs and README.

fn main() -> std::process::ExitCode {
    dnsd::cli::main()
}
