//! Keeping a copy of a damaged store file before we repair it, and the file-system plumbing that
//! makes replacing a store file crash-safe.

use std::{
    ffi::OsString,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::StoreError;

/// Writes `bytes` (the damaged file's contents) to a new `<path>.damaged-<unix_millis>` and
/// makes it durable before returning, because the caller is about to replace the original.
pub(crate) fn keep_copy(path: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
    let (copy_path, mut file) = create_copy_file(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io(path, "write a copy of the damaged file"))?;
    sync_parent(path)?;
    tracing::warn!(path = %path.display(), copy = %copy_path.display(), "kept a copy of the damaged store file");
    Ok(copy_path)
}

/// Creates the copy with `create_new`, so an earlier copy is never overwritten. The name uses
/// the first free millisecond at or after now, which keeps the `<path>.damaged-<digits>` form.
fn create_copy_file(path: &Path) -> Result<(PathBuf, File), StoreError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    for millis in now..now + 1000 {
        let candidate = sibling(path, &format!(".damaged-{millis}"));
        match File::options()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(file) => return Ok((candidate, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(StoreError::io(path, "create a copy of the damaged file")(e)),
        }
    }
    Err(StoreError::Io {
        path: path.to_path_buf(),
        op: "find a free name for a copy of the damaged file",
        cause: io::Error::from(io::ErrorKind::AlreadyExists),
    })
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// fsyncs the directory holding `path`, so that a created or renamed entry survives power loss
/// (fsync on the file alone does not persist its name).
pub(crate) fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(StoreError::io(path, "sync the parent directory"))
}

/// Removes `path` if it exists.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
