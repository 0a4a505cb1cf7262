//! Images on this machine: pull from a registry with progress, load a `docker save` tarball
//! streamed in chunks (so an image can reach a machine with no registry), list, remove.

use bollard::models::ImageSummary;
use bollard::query_parameters::{
    CreateImageOptions, ImportImageOptions, ListImagesOptions, RemoveImageOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use uncloud_common::docker::{ErrorKind, OpsError};
pub use uncloud_common::docker::{ImageInfo, PullProgress};

use crate::refusal::reason;

/// Size of the chunks a tarball is streamed to the engine in.
pub const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {0:?}")]
    BadReference(String),
    #[error("cannot pull {image}: {reason}")]
    Pull { image: String, reason: String },
    #[error("the engine could not load the image tarball: {0}")]
    Load(String),
    #[error("no image {0} on this machine")]
    NotFound(String),
    #[error("cannot {what} image {name}: {reason}")]
    Engine {
        what: &'static str,
        name: String,
        reason: String,
    },
}

impl From<ImageError> for OpsError {
    fn from(e: ImageError) -> Self {
        let kind = match &e {
            ImageError::Load(_) | ImageError::BadReference(_) => ErrorKind::InvalidArgument,
            ImageError::NotFound(_) => ErrorKind::NotFound,
            ImageError::Pull { .. } | ImageError::Engine { .. } => ErrorKind::Engine,
        };
        OpsError::new(kind, e.to_string())
    }
}

/// Streams a `docker save` tarball from `reader` to the engine, [`CHUNK`] bytes at a time.
/// Returns what the engine loaded (`name:tag`, or `sha256:…` for an untagged image). A
/// truncated or malformed tarball is an error and loads nothing.
pub async fn load<R>(docker: &Docker, reader: R) -> Result<Vec<String>, ImageError>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let chunks = futures::stream::unfold(reader, |mut r| async move {
        let mut buf = vec![0u8; CHUNK];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    });
    let mut progress = docker.import_image_stream(
        ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        chunks,
        None,
    );
    let mut loaded = Vec::new();
    while let Some(item) = progress.next().await {
        let info = item.map_err(|e| ImageError::Load(reason(e)))?;
        if let Some(e) = info.error_detail.and_then(|d| d.message) {
            return Err(ImageError::Load(e));
        }
        for line in info.stream.unwrap_or_default().lines() {
            if let Some(what) = line
                .strip_prefix("Loaded image: ")
                .or_else(|| line.strip_prefix("Loaded image ID: "))
            {
                loaded.push(what.trim().to_string());
            }
        }
    }
    if loaded.is_empty() {
        return Err(ImageError::Load("the tarball held no image".into()));
    }
    tracing::info!(?loaded, "image loaded");
    Ok(loaded)
}

/// `name[:tag]` or `name@digest` split into what the pull API wants; no tag means `latest`.
/// A registry port (`host:5000/app`) is not a tag.
pub fn split_reference(image: &str) -> Result<(String, String), ImageError> {
    let bad = || ImageError::BadReference(image.to_string());
    if image.is_empty() || image.chars().any(|c| c.is_whitespace()) {
        return Err(bad());
    }
    if let Some((name, digest)) = image.split_once('@') {
        if name.is_empty() || !digest.contains(':') {
            return Err(bad());
        }
        return Ok((name.to_string(), digest.to_string()));
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "")) => Err(bad()),
        Some((_, tag)) => {
            let name = &image[..image.len() - tag.len() - 1];
            Ok((name.to_string(), tag.to_string()))
        }
        None => Ok((image.to_string(), "latest".to_string())),
    }
}

/// Pulls `image`, reporting each progress message to `on_progress`.
pub async fn pull(
    docker: &Docker,
    image: &str,
    mut on_progress: impl FnMut(PullProgress),
) -> Result<(), ImageError> {
    let (name, tag) = split_reference(image)?;
    let mut stream = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(name),
            tag: Some(tag),
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| ImageError::Pull {
            image: image.to_string(),
            reason: reason(e),
        })?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(ImageError::Pull {
                image: image.to_string(),
                reason: message,
            });
        }
        let detail = info.progress_detail.unwrap_or_default();
        on_progress(PullProgress {
            layer: info.id.unwrap_or_default(),
            status: info.status.unwrap_or_default(),
            current: detail.current.unwrap_or(0).max(0) as u64,
            total: detail.total.unwrap_or(0).max(0) as u64,
        });
    }
    tracing::info!(image, "pulled");
    Ok(())
}

fn info(s: ImageSummary) -> ImageInfo {
    ImageInfo {
        id: s.id,
        tags: s
            .repo_tags
            .into_iter()
            .filter(|t| t != "<none>:<none>")
            .collect(),
        size_bytes: s.size.max(0) as u64,
    }
}

pub async fn list(docker: &Docker) -> Result<Vec<ImageInfo>, ImageError> {
    let images = docker
        .list_images(Some(ListImagesOptions::default()))
        .await
        .map_err(|e| ImageError::Engine {
            what: "list",
            name: "*".into(),
            reason: reason(e),
        })?;
    Ok(images.into_iter().map(info).collect())
}

/// Removes an image (by name or id); refused while a container uses it.
pub async fn remove(docker: &Docker, name: &str) -> Result<(), ImageError> {
    docker
        .remove_image(name, Some(RemoveImageOptions::default()), None)
        .await
        .map(|_| ())
        .map_err(|e| match &e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => ImageError::NotFound(name.to_string()),
            _ => ImageError::Engine {
                what: "remove",
                name: name.to_string(),
                reason: reason(e),
            },
        })
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references() {
        let ok = |r: &str, n: &str, t: &str| {
            assert_eq!(
                split_reference(r).unwrap(),
                (n.to_string(), t.to_string()),
                "{r}"
            )
        };
        ok("nginx", "nginx", "latest");
        ok("nginx:1.25", "nginx", "1.25");
        ok("localhost:5000/app", "localhost:5000/app", "latest");
        ok("localhost:5000/app:2", "localhost:5000/app", "2");
        ok("app@sha256:abc", "app", "sha256:abc");
        for bad in ["", "a b", "nginx:", "@sha256:x", "app@nodigest"] {
            assert!(split_reference(bad).is_err(), "{bad}");
        }
    }
}
