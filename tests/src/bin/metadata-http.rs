//! `metadata-http <routes-dir>`: answers one HTTP request on stdin/stdout from the documents
//! in `<routes-dir>`. QEMU's user network runs it for each connection a VM makes to its
//! provider's metadata address (`uncloud_qemu::metadata`).

use std::path::PathBuf;

fn main() {
    // No output but the response: stdout and stderr are both the guest's socket.
    let Some(root) = std::env::args_os().nth(1).map(PathBuf::from) else {
        std::process::exit(2);
    };
    uncloud_qemu::metadata::serve_connection(
        &root,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
    );
}
