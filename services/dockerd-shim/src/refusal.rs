//! What the Docker engine said when it refused a request: its HTTP status and its own message.
//! Used by every module that calls the engine (containers, images, volumes), and below all of
//! them, so none depends on another for it.

/// The HTTP status of an engine refusal, if the error is one.
pub fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own message for a refusal, else the transport's error.
pub fn reason(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        other => other.to_string(),
    }
}
