//! The built images on disk: finding one in `image/build`'s output folder, and writing its
//! raw disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tool::{run, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no images in {dir} ({source}): run image/build first")]
    Dir { dir: String, source: std::io::Error },
    #[error("no image *{suffix} in {dir}: run image/build first")]
    None { suffix: String, dir: String },
    #[error("several images *{suffix} in {dir}: {found:?}")]
    Several {
        suffix: String,
        dir: String,
        found: Vec<PathBuf>,
    },
}

/// Whether the file `name` is the image `*{suffix}`. A raw disk (`.raw`, `.img`) is there
/// as it is (`image/build --no-compress`) or as its `.xz` (a release build).
pub fn matches(name: &str, suffix: &str) -> bool {
    name.ends_with(suffix)
        || ((suffix.ends_with(".raw") || suffix.ends_with(".img"))
            && name
                .strip_suffix(".xz")
                .is_some_and(|n| n.ends_with(suffix)))
}

/// The one image in `dir` that [`matches`] `suffix` (such as `-amd64.qcow2`).
pub fn find(dir: &Path, suffix: &str) -> Result<PathBuf, FindError> {
    let shown = || dir.display().to_string();
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| FindError::Dir {
            dir: shown(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| matches(&n.to_string_lossy(), suffix))
        })
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(FindError::None {
            suffix: suffix.to_owned(),
            dir: shown(),
        }),
        _ => Err(FindError::Several {
            suffix: suffix.to_owned(),
            dir: shown(),
            found,
        }),
    }
}

/// Writes the raw disk of `image` to `to`: decompressed from `.xz`, converted from qcow2, or
/// a sparse copy of a raw file.
pub fn write_raw_disk(image: &Path, to: &Path) -> Result<(), ToolError> {
    let name = image.to_string_lossy();
    if name.ends_with(".xz") {
        let out = std::fs::File::create(to).map_err(|e| ToolError {
            command: format!("creating {}", to.display()),
            reason: e.to_string(),
        })?;
        run(Command::new("xz").arg("-dc").arg(image).stdout(out)).map(drop)
    } else if name.ends_with(".qcow2") {
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image)
            .arg(to))
        .map(drop)
    } else {
        run(Command::new("cp").arg("--sparse=always").arg(image).arg(to)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_disk_is_found_plain_or_compressed_and_other_kinds_only_as_named() {
        assert!(matches("uncloud-0.1.0-arm64-rpi.img", "-arm64-rpi.img"));
        assert!(matches("uncloud-0.1.0-arm64-rpi.img.xz", "-arm64-rpi.img"));
        assert!(matches("uncloud-0.1.0-amd64.raw.xz", "-amd64.raw"));
        assert!(matches("uncloud-0.1.0-amd64.raw.xz", "-amd64.raw.xz"));
        assert!(!matches("uncloud-0.1.0-amd64.raw.xz", "-amd64.qcow2"));
        assert!(!matches("uncloud-0.1.0-amd64.qcow2.xz", "-amd64.qcow2"));
        assert!(!matches(
            "uncloud-0.1.0-arm64-rpi.manifest.json",
            "-arm64-rpi.img"
        ));
    }

    #[test]
    fn find_names_what_is_missing_or_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let e = find(dir.path(), "-amd64.qcow2").unwrap_err().to_string();
        assert!(
            e.contains("no image *-amd64.qcow2") && e.contains("image/build"),
            "{e}"
        );
        std::fs::write(dir.path().join("u-arm64-rpi.img"), b"").unwrap();
        assert_eq!(
            find(dir.path(), "-arm64-rpi.img").unwrap(),
            dir.path().join("u-arm64-rpi.img")
        );
        std::fs::write(dir.path().join("u-arm64-rpi.img.xz"), b"").unwrap();
        let e = find(dir.path(), "-arm64-rpi.img").unwrap_err().to_string();
        assert!(e.contains("several images"), "{e}");
    }
}
