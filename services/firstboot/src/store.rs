//! Writing the machine's secret files so that a power cut never leaves half of one: a
//! temporary file in the same directory, fsync, rename, fsync of the directory.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct StoreError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and its parents) if missing and makes it `mode`; a new directory's entry
/// is made durable too.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), StoreError> {
    let existed = dir.is_dir();
    fs::create_dir_all(dir).map_err(err("cannot create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(err("cannot chmod", dir))?;
    match dir.parent() {
        Some(parent) if !existed => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Replaces `path` with `contents` atomically and durably, with permissions `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StoreError> {
    uncloud_common::durable::write_atomically(path, contents, mode)
        .map_err(err("cannot write durably", path))
}

/// Removes `path` durably (a missing file is fine).
pub fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("cannot remove", path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("cannot fsync", dir))
}

/// The file's text, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("cannot read", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_have_exactly_their_mode_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["secret"]);
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(read_optional(&path).unwrap(), None);
    }
}
