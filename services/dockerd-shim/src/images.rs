//! Images on this machine: load a `docker save` tarball streamed in chunks (so an image can
//! reach a machine with no registry), list, remove.

use bollard::models::ImageSummary;
use bollard::query_parameters::{ImportImageOptions, ListImagesOptions, RemoveImageOptions};
use bollard::Docker;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of the chunks a tarball is streamed to the engine in.
pub const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
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

fn reason(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
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

/// An image as `ListImages` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    pub id: String,
    pub tags: Vec<String>,
    pub size_bytes: u64,
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
