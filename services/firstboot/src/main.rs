//! The `uncloud-firstboot` command: see the crate docs and README.

fn main() -> std::process::ExitCode {
    uncloud_firstboot::cli::main()
}
