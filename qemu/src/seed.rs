//! Seed disks: how a test hands cloud-init its metadata and user-data on a disk, laid out as
//! one of two datasources reads it.
//!
//! - NoCloud: a filesystem labelled `CIDATA` with `meta-data`, `user-data` (and optionally
//!   `network-config`) at its root: what people use on their own hypervisors.
//! - ConfigDrive: a filesystem labelled `config-2` with `openstack/latest/meta_data.json` and
//!   `openstack/latest/user_data`: what OpenStack clouds and several VPS providers attach.
//!
//! Both are written as small FAT images with mtools, so no loop device or mount is needed.

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

/// Cloud-config that writes `content` to `/etc/uncloud/<file>` (`setup-token`,
/// `join-ticket`): how image/README.md tells people to hand a machine its setup.
pub fn write_uncloud_file(file: &str, content: &str) -> String {
    write_files(&[(&format!("/etc/uncloud/{file}"), content, "0600")])
}

/// Cloud-config that writes each `(path, content, mode)`, as ONE `write_files:` list: a
/// second `write_files:` key in the same document is a duplicate key, which cloud-init's YAML
/// reader takes silently, keeping only the last list. Contents go base64-encoded, so any
/// bytes (PEM, TOML with quotes) pass unchanged.
pub fn write_files(files: &[(&str, &str, &str)]) -> String {
    use base64::Engine as _;
    let mut out = String::from("write_files:\n");
    for (path, content, mode) in files {
        let b64 = base64::engine::general_purpose::STANDARD.encode(content);
        out.push_str(&format!(
            "- path: {path}\n  permissions: '{mode}'\n  encoding: b64\n  content: {b64}\n"
        ));
    }
    out
}

/// A FAT disk with a label and files (paths relative to its root, `/`-separated).
#[derive(Debug, Clone)]
pub struct SeedDisk {
    pub label: String,
    pub files: Vec<(String, String)>,
}

impl SeedDisk {
    /// NoCloud: `user-data` given as a `#cloud-config` document, with an instance id in
    /// `meta-data`.
    pub fn nocloud(instance_id: &str, cloud_config: &str) -> SeedDisk {
        SeedDisk {
            label: "CIDATA".into(),
            files: vec![
                ("meta-data".into(), format!("instance-id: {instance_id}\n")),
                ("user-data".into(), format!("#cloud-config\n{cloud_config}")),
            ],
        }
    }

    /// Adds a NoCloud `network-config` (version 2 YAML): static addresses, for VMs on a
    /// segment without DHCP.
    pub fn with_network_config(mut self, yaml: &str) -> SeedDisk {
        self.files.push(("network-config".into(), yaml.to_string()));
        self
    }

    /// ConfigDrive (OpenStack's layout, version `latest`): the instance's uuid and hostname
    /// in `meta_data.json`, and a `#cloud-config` document as `user_data`.
    pub fn config_drive(uuid: &str, hostname: &str, cloud_config: &str) -> SeedDisk {
        let meta = serde_json::json!({ "uuid": uuid, "hostname": hostname, "name": hostname });
        SeedDisk {
            // cloud-init looks for either case; FAT labels are upper case.
            label: "CONFIG-2".into(),
            files: vec![
                (
                    "openstack/latest/meta_data.json".into(),
                    format!("{meta}\n"),
                ),
                (
                    "openstack/latest/user_data".into(),
                    format!("#cloud-config\n{cloud_config}"),
                ),
            ],
        }
    }

    /// The directories to make, parents first, for the files' paths.
    fn directories(&self) -> Vec<String> {
        let mut dirs: Vec<String> = Vec::new();
        for (path, _) in &self.files {
            let mut prefix = String::new();
            let parts: Vec<&str> = path.split('/').collect();
            for part in &parts[..parts.len() - 1] {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                if !dirs.contains(&prefix) {
                    dirs.push(prefix.clone());
                }
            }
        }
        dirs
    }

    /// Writes the seed as a small FAT disk image at `path` (mkfs.vfat and mtools: no mount).
    pub fn write(&self, path: &Path) -> Result<(), SeedError> {
        let staging = path.with_extension("files");
        std::fs::create_dir_all(&staging).map_err(|source| SeedError::Write {
            path: staging.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(path);
        run(Command::new("mkfs.vfat")
            .args(["-n", &self.label, "-C"])
            .arg(path)
            .arg("2048"))?;
        for dir in self.directories() {
            run(Command::new("mmd")
                .arg("-i")
                .arg(path)
                .arg(format!("::/{dir}")))?;
        }
        for (i, (name, text)) in self.files.iter().enumerate() {
            let file = staging.join(i.to_string());
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
        let _ = std::fs::remove_dir_all(&staging);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtools(program: &str, args: &[&str], image: &Path) -> String {
        let out = Command::new(program)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(image)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} {args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn files_are_one_write_files_list_with_contents_in_base64() {
        use base64::Engine as _;
        let doc = write_files(&[
            ("/etc/uncloud/setup-token", "tok", "0600"),
            ("/etc/uncloud/ingressd.toml", "a = \"b\"\n", "0644"),
        ]);
        assert_eq!(doc.matches("write_files:").count(), 1, "{doc}");
        let contents: Vec<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("  content: "))
            .map(|b| {
                let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
                String::from_utf8(bytes).unwrap()
            })
            .collect();
        assert_eq!(contents, ["tok", "a = \"b\"\n"]);
        assert!(doc.contains("- path: /etc/uncloud/ingressd.toml\n  permissions: '0644'"));
    }

    #[test]
    fn nocloud_seed_is_a_fat_labelled_cidata_holding_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let seed = SeedDisk::nocloud("i-1", "hostname: e2e\n");
        seed.write(&path).expect("mkfs.vfat and mcopy are needed");
        assert!(mtools("mlabel", &["-s", "::"], &path).contains("CIDATA"));
        assert_eq!(
            mtools("mtype", &["::/user-data"], &path),
            "#cloud-config\nhostname: e2e\n"
        );
        assert_eq!(
            mtools("mtype", &["::/meta-data"], &path),
            "instance-id: i-1\n"
        );
    }

    #[test]
    fn config_drive_holds_openstacks_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config-drive.img");
        let seed = SeedDisk::config_drive("u-1", "vps \"one\"", "hostname: x\n");
        assert_eq!(seed.directories(), ["openstack", "openstack/latest"]);
        seed.write(&path)
            .expect("mkfs.vfat, mmd and mcopy are needed");
        assert!(mtools("mlabel", &["-s", "::"], &path).contains("CONFIG-2"));
        let meta: serde_json::Value = serde_json::from_str(&mtools(
            "mtype",
            &["::/openstack/latest/meta_data.json"],
            &path,
        ))
        .unwrap();
        assert_eq!(meta["uuid"], "u-1");
        assert_eq!(meta["hostname"], "vps \"one\"");
        assert_eq!(
            mtools("mtype", &["::/openstack/latest/user_data"], &path),
            "#cloud-config\nhostname: x\n"
        );
    }
}
