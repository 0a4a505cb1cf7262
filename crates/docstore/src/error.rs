//! Errors that [`Store`](crate::Store) returns instead of a loaded document.
//!
//! Damage to the file is not an error: it is repaired where possible and described in
//! [`LoadReport`](crate::LoadReport). What is left here are conditions a caller must see: the OS
//! refused I/O, the file is in use, or the file was written by a newer format.

use std::{io, path::PathBuf};

/// Every variant names the store's file, so a log line is enough to find it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An OS-level I/O operation outside redb failed (creating the directory, copying a damaged
    /// file aside, renaming the rebuilt file into place, ...).
    #[error("{}: failed to {op}: {cause}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        cause: io::Error,
    },

    /// Another process (or another `Store` in this process) has the file open. Never treated
    /// as damage: the file is left untouched.
    #[error("{}: already open (by another process or another Store)", path.display())]
    Locked { path: PathBuf },

    /// redb failed for a reason that is not damage to the file (I/O error, out of space, ...).
    #[error("{}: redb failed to {op}: {cause}", path.display())]
    Redb {
        path: PathBuf,
        op: &'static str,
        // Boxed: redb::Error is large and this enum travels in every Result.
        cause: Box<redb::Error>,
    },

    /// The file was written by a newer docstore format. Refused rather than "repaired", so a
    /// downgrade does not destroy data the newer version can still read.
    #[error(
        "{}: docstore format {found} is newer than format {supported}, which this build reads",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// A blob handed to `append` or `compact` is not a sequence of automerge chunks. Refused
    /// before anything is written, because a bad blob would be reported as damage on every load.
    #[error("{}: refusing to store blob {index}: {reason}", path.display())]
    InvalidBlob {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn io(path: &std::path::Path, op: &'static str) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |cause| StoreError::Io { path, op, cause }
    }

    pub(crate) fn redb<E: Into<redb::Error>>(
        path: &std::path::Path,
        op: &'static str,
    ) -> impl FnOnce(E) -> Self {
        let path = path.to_path_buf();
        move |source| match source.into() {
            redb::Error::DatabaseAlreadyOpen => StoreError::Locked { path },
            source => StoreError::Redb {
                path,
                op,
                cause: Box::new(source),
            },
        }
    }
}
