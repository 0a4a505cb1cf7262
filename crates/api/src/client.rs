//! Connecting to apid: TCP, TLS, length-delimited JSON frames, tarpc.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tarpc::tokio_serde::formats::Json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::LengthDelimitedCodec;

use crate::wire::{ApiClient, MAX_FRAME_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("no answer from {addr} within {secs} s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
}

/// Opens a connection to apid at `addr` and returns a client for it.
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<ApiClient, ConnectError> {
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Unreachable {
                addr,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::Tls {
                addr,
                reason: e.to_string(),
            })?;
        Ok(stream)
    };
    let stream =
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ConnectError::Timeout {
                addr,
                secs: timeout.as_secs(),
            })??;
    let framed = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_framed(stream);
    let transport = tarpc::serde_transport::new(framed, Json::default());
    Ok(ApiClient::new(tarpc::client::Config::default(), transport).spawn())
}

/// A tarpc context whose deadline is `timeout` from now.
pub fn context(timeout: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + timeout;
    ctx
}
