//! The `meshd` daemon: see the crate docs and README.

fn main() -> std::process::ExitCode {
    meshd::cli::main()
}
