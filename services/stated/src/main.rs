//! The `stated` daemon: see the crate docs and README.

fn main() -> std::process::ExitCode {
    stated::command::main(std::env::args_os())
}
