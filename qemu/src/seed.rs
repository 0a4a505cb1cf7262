//! NoCloud seed disks: how a test hands cloud-init its user-data.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tool::{run, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// The files cloud-init's NoCloud datasource reads from a disk labelled `CIDATA`.
#[derive(Debug, Clone, Default)]
pub struct NoCloudSeed {
    pub user_data: String,
    pub meta_data: String,
    pub network_config: Option<String>,
}

impl NoCloudSeed {
    /// `user-data` given as a `#cloud-config` document, with an instance id in `meta-data`.
    pub fn cloud_config(instance_id: &str, cloud_config: &str) -> NoCloudSeed {
        NoCloudSeed {
            user_data: format!("#cloud-config\n{cloud_config}"),
            meta_data: format!("instance-id: {instance_id}\n"),
            network_config: None,
        }
    }

    /// Writes the seed as a small FAT disk image at `path` (mkfs.vfat and mcopy: no mount).
    pub fn write(&self, path: &Path) -> Result<(), SeedError> {
        let dir = path.with_extension("files");
        std::fs::create_dir_all(&dir).map_err(|source| SeedError::Write {
            path: dir.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(path);
        run(Command::new("mkfs.vfat")
            .args(["-n", "CIDATA", "-C"])
            .arg(path)
            .arg("2048"))?;
        let mut files = vec![
            ("user-data", self.user_data.as_str()),
            ("meta-data", self.meta_data.as_str()),
        ];
        if let Some(n) = &self.network_config {
            files.push(("network-config", n.as_str()));
        }
        for (name, text) in files {
            let file = dir.join(name);
            std::fs::write(&file, text).map_err(|source| SeedError::Write {
                path: file.clone(),
                source,
            })?;
            run(Command::new("mcopy")
                .arg("-i")
                .arg(path)
                .arg(&file)
                .arg(format!("::/{name}")))?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_disk_is_a_fat_labelled_cidata_holding_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let seed = NoCloudSeed::cloud_config("i-1", "hostname: e2e\n");
        seed.write(&path).expect("mkfs.vfat and mcopy are needed");
        let label = Command::new("mlabel")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-i"])
            .arg(&path)
            .arg("::")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&label.stdout).contains("CIDATA"));
        let user_data = Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&path)
            .arg("::/user-data")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&user_data.stdout),
            "#cloud-config\nhostname: e2e\n"
        );
    }
}
