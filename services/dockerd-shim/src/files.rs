//! The files a service mounts (Compose secrets and configs), written for each container.
//!
//! A spec names each file's content by digest ([`FileMount`]); the content is in the
//! replicated state. Before it creates a container the shim reads the contents from this
//! machine's stated (waiting a little for one the deploying machine stored a moment ago to
//! arrive), checks each against its digest, and writes them under
//! `<dir>/<container name>/` (the directory root's only, 0700; each file with the mode and
//! owner the spec asks, 0444 root by default, as Compose). They are bind-mounted read-only at
//! their targets. The directory lives on disk, not tmpfs: Docker restarts the container after
//! a reboot, and its mounts must still be there; the same contents are in the state's file on
//! this disk anyway. The directory goes when the container is removed through the shim, and
//! a resync removes the directories of containers that are gone.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use uncloud_common::dbus::StateProxy;
use uncloud_common::model::{FileMount, StoredFile};

use crate::spec::FileBind;

/// Docker's container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128 characters. Checked
/// before a name becomes a directory here (`..` is not one).
pub fn is_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Why a container's files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(
        "the content of {name} ({digest}) has not reached this machine's state after {waited_s} s; \
         is the machine that stored it reachable? `uc deploy` again stores it"
    )]
    Missing {
        name: String,
        digest: String,
        waited_s: u64,
    },
    #[error("the content of {name} in the state is damaged: {why}")]
    Damaged { name: String, why: String },
    #[error("cannot read file contents from stated: {0}")]
    State(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<FileError> for uncloud_common::docker::OpsError {
    fn from(e: FileError) -> Self {
        use uncloud_common::docker::ErrorKind;
        let kind = match &e {
            FileError::Missing { .. } => ErrorKind::NotFound,
            FileError::Damaged { .. } => ErrorKind::InvalidArgument,
            FileError::State(_) | FileError::Write { .. } => ErrorKind::Engine,
        };
        Self::new(kind, e.to_string())
    }
}

/// Where containers' files are written, and the state their contents come from.
#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    state: StateProxy<'static>,
    /// How long a content missing from the state is waited for.
    wait: Duration,
}

/// How long a directory must exist before a resync may remove it: a container being created
/// has its files before the engine knows it.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(120);

impl FileStore {
    pub fn new(dir: PathBuf, state: StateProxy<'static>, wait: Duration) -> Self {
        FileStore { dir, state, wait }
    }

    fn container_dir(&self, container: &str) -> PathBuf {
        // A Docker name ([`is_container_name`]): one safe path component.
        self.dir.join(container.trim_start_matches('/'))
    }

    /// Writes the files of container `container` (replacing any left from before).
    pub async fn write(
        &self,
        container: &str,
        mounts: &[FileMount],
    ) -> Result<Vec<FileBind>, FileError> {
        let contents = self.contents(mounts).await?;
        let dir = self.container_dir(container);
        let mounts = mounts.to_vec();
        tokio::task::spawn_blocking(move || write_all(&dir, &mounts, &contents))
            .await
            .expect("writing files does not panic")
    }

    /// Removes the files of `container`; nothing there is no error.
    pub fn remove(&self, container: &str) {
        if !is_container_name(container.trim_start_matches('/')) {
            return;
        }
        let dir = self.container_dir(container);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a container's files");
            }
        }
    }

    /// Removes the directories of containers not in `existing` (by name), older than a
    /// couple of minutes.
    pub fn sweep(&self, existing: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if existing.contains(&name) {
                continue;
            }
            let old_enough = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= SWEEP_MIN_AGE);
            if old_enough {
                tracing::info!(container = %name, "removing the files of a container that is gone");
                self.remove(&name);
            }
        }
    }

    /// The contents of `mounts`, in order, waiting up to `wait` for missing ones.
    async fn contents(&self, mounts: &[FileMount]) -> Result<Vec<Vec<u8>>, FileError> {
        let digests: Vec<&str> = mounts.iter().map(|m| m.digest.as_str()).collect();
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let json = self
                .state
                .get_many("files", &digests)
                .await
                .map_err(|e| FileError::State(e.to_string()))?;
            let found: std::collections::BTreeMap<String, StoredFile> =
                serde_json::from_str(&json).map_err(|e| FileError::State(e.to_string()))?;
            match mounts.iter().find(|m| !found.contains_key(&m.digest)) {
                None => {
                    return mounts
                        .iter()
                        .map(|m| {
                            uncloud_common::files::decode(&found[&m.digest].content, &m.digest)
                                .map_err(|e| FileError::Damaged {
                                    name: m.name.clone(),
                                    why: e.to_string(),
                                })
                        })
                        .collect();
                }
                Some(missing) if tokio::time::Instant::now() >= deadline => {
                    return Err(FileError::Missing {
                        name: missing.name.clone(),
                        digest: missing.digest.clone(),
                        waited_s: self.wait.as_secs(),
                    })
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

fn write_all(
    dir: &Path,
    mounts: &[FileMount],
    contents: &[Vec<u8>],
) -> Result<Vec<FileBind>, FileError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FileError::Write { path, source }
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(err(dir))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err(dir))?;
    let mut written = Vec::new();
    for (i, (m, content)) in mounts.iter().zip(contents).enumerate() {
        // The index keeps two files of one name (a secret and a config) apart.
        // The end of its name, for people looking; ASCII only, so it always fits.
        let tail: String = m
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{i}-{}", &tail[tail.len().saturating_sub(100)..]));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(err(&path))?;
        f.write_all(content).map_err(err(&path))?;
        f.sync_all().map_err(err(&path))?;
        std::os::unix::fs::chown(&path, Some(m.uid), Some(m.gid)).map_err(err(&path))?;
        // After chown, which clears set-id bits.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m.mode_or_default()))
            .map_err(err(&path))?;
        written.push(FileBind {
            source: path,
            target: m.target.clone(),
        });
    }
    // The directory entries too: a container Docker restarts after a power cut finds them.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_docker_names_become_directories() {
        for ok in ["web-1", "store-web-3f2a", "a.b_c"] {
            assert!(is_container_name(ok), "{ok}");
        }
        for bad in ["", "..", "../x", "a/b", "-x", ".x", &"a".repeat(129)] {
            assert!(!is_container_name(bad), "{bad}");
        }
    }

    #[test]
    fn files_get_their_content_mode_and_owner_and_replace_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("web-1");
        let mounts = vec![
            FileMount {
                name: "pw".into(),
                target: "/run/secrets/pw".into(),
                digest: uncloud_common::files::digest(b"s3cret"),
                mode: 0o400,
                uid: 1000,
                gid: 1001,
                secret: true,
            },
            FileMount {
                name: "pw".into(),
                target: "/etc/pw.conf".into(),
                digest: uncloud_common::files::digest(b"x=1"),
                ..Default::default()
            },
        ];
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("stale"), b"old").unwrap();
        let w = write_all(&c, &mounts, &[b"s3cret".to_vec(), b"x=1".to_vec()]).unwrap();
        assert_eq!(w.len(), 2);
        assert!(!c.join("stale").exists());
        use std::os::unix::fs::MetadataExt as _;
        let m0 = std::fs::metadata(&w[0].source).unwrap();
        assert_eq!(
            (m0.mode() & 0o7777, m0.uid(), m0.gid()),
            (0o400, 1000, 1001)
        );
        assert_eq!(std::fs::read(&w[0].source).unwrap(), b"s3cret");
        let m1 = std::fs::metadata(&w[1].source).unwrap();
        assert_eq!((m1.mode() & 0o7777, m1.uid()), (0o444, 0));
        assert_eq!(w[1].target, "/etc/pw.conf");
        assert_eq!(
            std::fs::metadata(&c).unwrap().mode() & 0o777,
            0o700,
            "only root enters the directory"
        );
    }
}
