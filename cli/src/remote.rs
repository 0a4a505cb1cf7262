//! Reaching apid: a fresh machine by its key's fingerprint, a network through a context.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use uncloud_api::client::{connect, context, ConnectError};
use uncloud_api::wire::{ApiClient, ApiError, ErrorKind, PORT};
use uncloud_pki::Fingerprint;

use crate::context::Context;

/// How long one endpoint gets to answer a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call may take (a join waits for the issuer, which may be far away).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0:?} is not HOST or HOST:PORT that resolves to an address")]
    BadAddress(String),
    #[error(
        "the machine at {addr} did not show the key with fingerprint {pin}: check the \
         fingerprint on its console; a machine that already belongs to a network shows its \
         network certificate instead (it must be removed from that network first); if neither, \
         something between you and it is not the machine"
    )]
    WrongFingerprint { addr: SocketAddr, pin: Fingerprint },
    #[error(
        "the machine at {addr} is not a machine of this context's network (its certificate \
         is from no CA the context knows); is the address right?"
    )]
    UnknownServer { addr: SocketAddr },
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("no endpoint of context {context:?} answered:\n  {tried}")]
    NoEndpoint { context: String, tried: String },
    #[error("{}", with_hint(.0))]
    Api(ApiError),
    #[error("the call failed on the way: {0}")]
    Rpc(String),
    #[error(
        "the machine at {via} runs an older apid (API {has}) that lacks this call (API \
         {needs}): upgrade it, or use `--endpoint` of an upgraded machine"
    )]
    OldApi { via: String, has: u32, needs: u32 },
}

fn with_hint(e: &ApiError) -> String {
    let hint = match e.kind {
        ErrorKind::BadToken => "the setup token is on the machine's console and in its boot log",
        ErrorKind::RateLimited => "wait, then retry with the right token",
        ErrorKind::Forbidden => "ask an admin for a certificate with the role this needs",
        ErrorKind::BadTicket => "get a new ticket with `uc machine token`",
        ErrorKind::Unreachable => "check that the machines can reach each other",
        ErrorKind::NotFound if e.message.contains("machine") => {
            "`uc machine ls` lists the machines"
        }
        _ => "",
    };
    if hint.is_empty() || e.message.contains(hint) {
        e.message.clone()
    } else {
        format!("{} ({hint})", e.message)
    }
}

/// `HOST`, `HOST:PORT`, `IP`, `[IPv6]:PORT` to a socket address (apid's port by default).
pub fn resolve(host: &str) -> Result<SocketAddr, RemoteError> {
    let bad = || RemoteError::BadAddress(host.to_string());
    if let Ok(a) = host.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, PORT));
    }
    let with_port = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:{PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

/// A fresh machine, accepted only with the key the user read on its console.
pub async fn fresh_machine(host: &str, pin: Fingerprint) -> Result<ApiClient, RemoteError> {
    let addr = resolve(host)?;
    let tls = uncloud_api::tls::client_pinned(pin).map_err(|e| RemoteError::Rpc(e.to_string()))?;
    connect(addr, tls, CONNECT_TIMEOUT)
        .await
        .map_err(|e| match e {
            ConnectError::Tls { addr, reason }
                if reason.contains("ApplicationVerificationFailure") =>
            {
                RemoteError::WrongFingerprint { addr, pin }
            }
            e => e.into(),
        })
}

/// A member of the context's network: `--endpoint`, else the context's endpoints in turn,
/// the first that answers.
pub async fn member(ctx: &Context, g: &crate::Global) -> Result<(ApiClient, String), RemoteError> {
    match &g.endpoint {
        Some(e) => member_at(ctx, std::slice::from_ref(e)).await,
        None => member_at(ctx, &ctx.endpoints).await,
    }
}

pub async fn member_at(
    ctx: &Context,
    endpoints: &[String],
) -> Result<(ApiClient, String), RemoteError> {
    let tls = uncloud_api::tls::client_member(&ctx.ca_pem, &ctx.cert_pem, &ctx.key_pem)
        .map_err(|e| RemoteError::Rpc(format!("context {:?} is unusable: {e}", ctx.name)))?;
    let mut tried = Vec::new();
    for endpoint in endpoints {
        let addr = match resolve(endpoint) {
            Ok(a) => a,
            Err(e) => {
                tried.push(e.to_string());
                continue;
            }
        };
        match connect(addr, tls.clone(), CONNECT_TIMEOUT).await {
            Ok(c) => return Ok((c, endpoint.clone())),
            Err(ConnectError::Tls { addr, reason })
                if reason.contains("UnknownIssuer")
                    || reason.contains("ApplicationVerificationFailure") =>
            {
                tried.push(RemoteError::UnknownServer { addr }.to_string())
            }
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(RemoteError::NoEndpoint {
        context: ctx.name.clone(),
        tried: tried.join("\n  "),
    })
}

/// Checks that the connected apid knows calls added in API `version`: an older one would
/// close the connection on them, which reads as a broken network.
pub async fn require_api(client: &ApiClient, via: &str, version: u32) -> Result<(), RemoteError> {
    let info = answer(client.info(ctx()).await)?;
    if info.api_version < version {
        return Err(RemoteError::OldApi {
            via: via.to_string(),
            has: info.api_version,
            needs: version,
        });
    }
    Ok(())
}

/// Unwraps a tarpc call's two layers of errors.
pub fn answer<T>(
    r: Result<Result<T, ApiError>, tarpc::client::RpcError>,
) -> Result<T, RemoteError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RemoteError::Api(e)),
        Err(tarpc::client::RpcError::DeadlineExceeded) => Err(RemoteError::Rpc(format!(
            "no answer within {} s",
            CALL_TIMEOUT.as_secs()
        ))),
        Err(e) => Err(RemoteError::Rpc(e.to_string())),
    }
}

pub fn ctx() -> tarpc::context::Context {
    context(CALL_TIMEOUT)
}

/// Every service and its containers, as the connected machine's state has them.
pub async fn services(member: &ApiClient) -> anyhow::Result<Vec<uncloud_api::service::ServiceRow>> {
    use uncloud_api::wire::{Answer, Call};
    match answer(member.call(ctx(), Call::Services).await)? {
        Answer::Services(rows) => Ok(rows),
        _ => anyhow::bail!("the machine answered something else than its services"),
    }
}
