//! The `stated` daemon: see the crate docs and README.

fn main() -> std::process::ExitCode {
    stated::cli::main()
}
