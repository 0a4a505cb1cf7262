//! `uc -m`: calls for other machines, forwarded over the mesh ([`uncloud_api::peer`]).
//!
//! The machine `uc` is connected to resolves the targets, answers for itself, and asks each
//! other target on its mesh address, all at once, each bounded by [`FORWARD_TIMEOUT`]: a
//! machine that is down or across a partition is reported unreachable, never waited for.
//! The target serves the call with the caller's role, as if `uc` had asked it directly
//! ([`crate::peer_server`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tarpc::tokio_serde::formats::Json;
use tokio::net::TcpStream;
use tokio_util::codec::LengthDelimitedCodec;
use uncloud_api::peer::{Forwarded, PeerClient};
use uncloud_api::wire::{Answer, ApiError, Call, ErrorKind, MAX_FRAME_BYTES};
use uncloud_common::model::Machine;

/// How long a target gets to accept the connection, and to answer most calls.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a target that accepted the connection gets to answer `call`: calls that run a
/// command on the target (`systemctl`, `journalctl`) get that command's bound and a margin.
pub fn answer_timeout(call: &Call) -> Duration {
    match call {
        Call::Status | Call::Logs(_) => crate::host::COMMAND_TIMEOUT + Duration::from_secs(2),
        // A page of up to 5,000 lines read from the engine.
        Call::ContainerLogs(_) => Duration::from_secs(10),
        _ => FORWARD_TIMEOUT,
    }
}
/// Pause before connecting again to a target that refused: its apid is starting, or is
/// binding its new mesh address.
const REFUSED_RETRY: Duration = Duration::from_millis(100);

/// The machines `requested` names, in the order asked and without repeats; `all` is every
/// machine, by name. A name no machine has comes back as `Err(name)`.
pub fn resolve(
    machines: &BTreeMap<String, Machine>,
    requested: &[String],
) -> Vec<Result<Machine, String>> {
    let mut by_name: Vec<&Machine> = machines.values().collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: Vec<Result<Machine, String>> = Vec::new();
    let push = |r: Result<Machine, String>, out: &mut Vec<Result<Machine, String>>| {
        let seen = out.iter().any(|o| match (o, &r) {
            (Ok(a), Ok(b)) => a.id == b.id,
            (Err(a), Err(b)) => a == b,
            _ => false,
        });
        if !seen {
            out.push(r);
        }
    };
    for want in requested {
        let want = want.trim();
        if want == "all" {
            for m in &by_name {
                push(Ok((*m).clone()), &mut out);
            }
            continue;
        }
        let found = machines
            .get(want)
            .or_else(|| by_name.iter().copied().find(|m| m.name == want));
        match found {
            Some(m) => push(Ok(m.clone()), &mut out),
            None => push(Err(want.to_string()), &mut out),
        }
    }
    out
}

pub(crate) fn framed<T>(io: T) -> tokio_util::codec::Framed<T, LengthDelimitedCodec>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_framed(io)
}

/// Asks the apid at `addr` (a machine's mesh address) to do `call` for `caller`.
pub async fn forward(
    name: &str,
    addr: SocketAddr,
    caller: Forwarded,
    call: Call,
) -> Result<Answer, ApiError> {
    let unreachable = |why: String| {
        ApiError::new(
            ErrorKind::Unreachable,
            format!("{name} ({}) {why}: down, or across a partition", addr.ip()),
        )
    };
    let connect = async {
        // A refusal comes back at once, from a machine that is up but whose apid does not
        // listen yet (just joined, restarting, renumbered): ask again until the deadline. A
        // machine that is down or cut off never answers and ends in the timeout below.
        loop {
            match TcpStream::connect(addr).await {
                Ok(tcp) => break Ok(tcp),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tokio::time::sleep(REFUSED_RETRY).await;
                }
                Err(e) => break Err(unreachable(format!("cannot be reached ({e})"))),
            }
        }
    };
    let tcp = tokio::time::timeout(FORWARD_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| {
            Err(unreachable(format!(
                "did not accept a connection within {} s",
                FORWARD_TIMEOUT.as_secs()
            )))
        })?;
    let _ = tcp.set_nodelay(true);
    let limit = answer_timeout(&call);
    let work = async {
        let transport = tarpc::serde_transport::new(framed(tcp), Json::default());
        let client = PeerClient::new(tarpc::client::Config::default(), transport).spawn();
        client
            .call(uncloud_api::client::context(limit), caller, call)
            .await
            .map_err(|e| unreachable(format!("did not answer ({e})")))?
    };
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(unreachable(format!(
            "did not answer within {} s",
            limit.as_secs()
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machines() -> BTreeMap<String, Machine> {
        [("m2", "bravo", 2), ("m1", "alpha", 1), ("m3", "charlie", 3)]
            .into_iter()
            .map(|(id, name, subnet)| {
                (
                    id.to_string(),
                    Machine {
                        id: id.into(),
                        name: name.into(),
                        subnet,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn names(r: Vec<Result<Machine, String>>) -> Vec<String> {
        r.into_iter()
            .map(|x| x.map(|m| m.name).unwrap_or_else(|e| format!("?{e}")))
            .collect()
    }

    #[test]
    fn all_is_every_machine_by_name_and_names_keep_their_order() {
        let all = names(resolve(&machines(), &["all".into()]));
        assert_eq!(all, ["alpha", "bravo", "charlie"]);
        let some = names(resolve(
            &machines(),
            &["charlie".into(), "m1".into(), "alpha".into(), "nope".into()],
        ));
        assert_eq!(
            some,
            ["charlie", "alpha", "?nope"],
            "ids and names, once each"
        );
        let both = names(resolve(&machines(), &["bravo".into(), "all".into()]));
        assert_eq!(both, ["bravo", "alpha", "charlie"]);
    }

    #[test]
    fn the_port_is_the_one_meshd_lets_in_through_the_mesh_only() {
        assert_eq!(
            uncloud_api::peer::PEER_PORT,
            uncloud_common::rpc::APID_PEER_PORT
        );
    }
}
