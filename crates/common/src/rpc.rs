//! tarpc services spoken between machines.
//!
//! They listen only on the machine's mesh address, which WireGuard already authenticates and
//! encrypts; every request still carries the network id so a misconfigured peer is refused.
//! Every connection speaks [`MsgPack`], which tolerates fields added by newer peers.

use std::marker::PhantomData;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::docker::{
    ErrorKind, ExecRequest, ImageInfo, LogsRequest, OpsError, StatsSummary, StreamOutput,
    VolumeInfo,
};
use crate::model::{Container, Service};

/// Largest frame accepted on a machine-to-machine connection. A sync message carries at most
/// the changes one side lacks; anything bigger is refused rather than buffered.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// One round of automerge's sync protocol between two machines.
///
/// The caller runs a session: it sends its sync message, applies the reply, and repeats until
/// neither side has anything to send. Each side keeps a `sync::State` for the other, so rounds
/// after the first exchange only what changed.
#[tarpc::service]
pub trait StateSync {
    async fn sync(request: SyncRequest) -> Result<SyncReply, SyncError>;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    pub network_id: String,
    /// Machine id of the caller.
    pub from: String,
    /// Fresh for each session; a new session resets the server's in-flight bookkeeping.
    pub session: u64,
    /// An encoded automerge sync message, or `None` when the caller has nothing to send.
    pub message: Option<Vec<u8>>,
    /// The container tables: the caller's versions and what the server lacks (decision
    /// 0014). `None` from a machine that predates them.
    #[serde(default)]
    pub tables: Option<TablesMessage>,
    /// `message` is one part of a message too big for one frame; more parts follow, and the
    /// server applies them all once the last (with `more` false) arrives.
    #[serde(default)]
    pub more: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncReply {
    /// The server's next sync message, or `None` when it has nothing to send.
    pub message: Option<Vec<u8>>,
    /// The server's table versions and what the caller lacks; `None` from an older server.
    #[serde(default)]
    pub tables: Option<TablesMessage>,
    /// `message` is one part of a message too big for one frame: the caller asks again, with
    /// no message, for the next part.
    #[serde(default)]
    pub more: bool,
}

/// One side's container tables in a sync round: which versions it holds, and the changes the
/// other side lacks by the versions it last said it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablesMessage {
    /// Machine id -> version of that machine's table, for every table the sender holds.
    #[serde(default)]
    pub versions: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub deltas: Vec<TableDelta>,
}

/// The changes to one machine's container table after version `since` up to `version`;
/// `since == 0` is the whole table, which replaces the receiver's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDelta {
    pub machine_id: String,
    #[serde(default)]
    pub since: u64,
    pub version: u64,
    /// Containers written after `since`, each with the version that wrote it last.
    #[serde(default)]
    pub rows: Vec<TableRow>,
    /// Ids of containers removed after `since`.
    #[serde(default)]
    pub removed: Vec<String>,
}

/// One container as its machine's table holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRow {
    pub version: u64,
    pub container: crate::model::Container,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SyncError {
    #[error("peer belongs to network {theirs:?}, this machine to {ours:?}")]
    WrongNetwork { ours: String, theirs: String },
    #[error("malformed sync message: {0}")]
    Malformed(String),
    #[error("invalid caller id: {0}")]
    InvalidCaller(String),
    #[error("server is shutting down")]
    Unavailable,
}

/// The codec of every machine-to-machine connection: MessagePack with structs as maps of
/// named fields and byte vectors as binary (decision 0012).
///
/// Named fields are what lets a network upgrade one machine at a time: a peer ignores fields
/// it does not know, and a field it lacks takes its default (`Option`s and fields marked
/// `#[serde(default)]`), so a message from an older or newer peer still decodes. bincode
/// (used before) encodes by position and fails on any added field. A new enum variant is
/// still unknown to an old peer: calls that need one ask the peer's version first.
pub struct MsgPack<Item, SinkItem>(PhantomData<(Item, SinkItem)>);

impl<Item, SinkItem> Default for MsgPack<Item, SinkItem> {
    fn default() -> Self {
        MsgPack(PhantomData)
    }
}

impl<Item, SinkItem: Serialize> tarpc::tokio_serde::Serializer<SinkItem>
    for MsgPack<Item, SinkItem>
{
    type Error = std::io::Error;

    fn serialize(self: Pin<&mut Self>, item: &SinkItem) -> Result<bytes::Bytes, Self::Error> {
        encode(item).map(bytes::Bytes::from)
    }
}

impl<Item: for<'de> Deserialize<'de>, SinkItem> tarpc::tokio_serde::Deserializer<Item>
    for MsgPack<Item, SinkItem>
{
    type Error = std::io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &bytes::BytesMut) -> Result<Item, Self::Error> {
        decode(src)
    }
}

/// One value in the wire encoding of [`MsgPack`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    let mut ser = rmp_serde::Serializer::new(&mut out)
        .with_struct_map()
        .with_bytes(rmp_serde::config::BytesMode::ForceIterables);
    value
        .serialize(&mut ser)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(out)
}

/// One value from the wire encoding of [`MsgPack`]; a malformed frame is an `InvalidData`
/// error (the connection ends), never a panic.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, std::io::Error> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A tarpc transport over a byte stream, framed with [`MAX_FRAME_BYTES`] and [`MsgPack`]: the
/// same on every machine-to-machine connection.
pub fn transport<S, Item, SinkItem>(
    stream: S,
) -> tarpc::serde_transport::Transport<S, Item, SinkItem, MsgPack<Item, SinkItem>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    transport_capped(stream, MAX_FRAME_BYTES)
}

/// [`transport`] with a smaller frame cap, for services whose messages are small.
pub fn transport_capped<S, Item, SinkItem>(
    stream: S,
    max_frame_bytes: usize,
) -> tarpc::serde_transport::Transport<S, Item, SinkItem, MsgPack<Item, SinkItem>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    let codec = tarpc::tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(max_frame_bytes)
        .new_codec();
    tarpc::serde_transport::new(
        tarpc::tokio_util::codec::Framed::new(stream, codec),
        MsgPack::default(),
    )
}

/// TCP port of [`ContainerOps`] on a machine's mesh address.
pub const CONTAINER_OPS_PORT: u16 = 7948;

/// TCP port where apid takes calls other machines forward for `uc -m`, on the mesh address
/// (the service is `uncloud_api::peer`).
pub const APID_PEER_PORT: u16 = 7949;

/// Largest chunk of an image tarball in one [`ContainerOps::load_image_chunk`] call.
pub const MAX_UPLOAD_CHUNK: usize = 4 * 1024 * 1024;

/// Largest [`ContainerOps`] frame: a full chunk plus room for the envelope. A request is
/// decoded before any check, so this bounds what one frame can make the server hold.
pub const CONTAINER_OPS_MAX_FRAME: usize = MAX_UPLOAD_CHUNK + 64 * 1024;

/// Longest a [`ContainerOps::stream_read`] waits for output. Below tarpc's default 10 s
/// deadline, so callers need not change it.
pub const MAX_STREAM_WAIT_MS: u32 = 5_000;

/// Container operations on one machine, for other machines (apid's fan-out): served by that
/// machine's dockerd-shim on its mesh address.
///
/// A connection starts with [`hello`](ContainerOps::hello); every other call fails with
/// [`ErrorKind::Refused`](crate::docker::ErrorKind::Refused) until it succeeded. Only machine
/// addresses (`10.210.X.1`) may connect, never containers.
///
/// Streams (logs, exec, pull progress) are opened by one call and then read with
/// [`stream_read`](ContainerOps::stream_read), which waits up to `wait_ms` for output, until
/// it reports the end; a stream nobody reads for a minute is closed. An image tarball is sent
/// as `load_image_begin`, any number of `load_image_chunk`s (in order, each at most
/// [`MAX_UPLOAD_CHUNK`]) and `load_image_end`.
///
/// Streams and uploads belong to the calling machine's address (not to the id it says in
/// `hello`). tarpc's default deadline is 10 s: a caller of `stop`/`restart` with a long grace
/// period or of `load_image_end` for a big image sets a longer one.
#[tarpc::service]
pub trait ContainerOps {
    /// Introduces the caller: its network id and machine id.
    async fn hello(network_id: String, from: String) -> Result<(), OpsError>;
    /// Creates and starts container `name` from `service`; returns its id.
    async fn run_service(service: Service, name: String) -> Result<String, OpsError>;
    async fn stop(container: String, grace_secs: i32) -> Result<(), OpsError>;
    async fn start(container: String) -> Result<(), OpsError>;
    async fn restart(container: String, grace_secs: i32) -> Result<(), OpsError>;
    /// Removes a container; a running one first drains (leaves its service's addresses for the
    /// shim's `drain_ms`).
    async fn remove(container: String) -> Result<(), OpsError>;
    async fn inspect(container: String) -> Result<Container, OpsError>;
    async fn stats(container: String) -> Result<StatsSummary, OpsError>;
    /// Opens a stream of the container's logs.
    async fn logs(container: String, request: LogsRequest) -> Result<u64, OpsError>;
    /// Starts a command in the container; its output is a stream, its input goes with
    /// `stream_write`, and the end carries the exit code.
    async fn exec(container: String, request: ExecRequest) -> Result<u64, OpsError>;
    /// Sets the terminal size of an exec started with `tty`.
    async fn exec_resize(stream: u64, height: u16, width: u16) -> Result<(), OpsError>;
    /// Starts pulling an image; the stream carries [`PullProgress`](crate::docker::PullProgress) as JSON lines on stdout and
    /// ends with the outcome.
    async fn pull_image(image: String) -> Result<u64, OpsError>;
    /// Output produced since the last read, waiting up to `wait_ms` (at most
    /// [`MAX_STREAM_WAIT_MS`]) for some.
    async fn stream_read(stream: u64, wait_ms: u32) -> Result<StreamOutput, OpsError>;
    /// Input for an exec; `close` ends its stdin after `data`.
    async fn stream_write(stream: u64, data: Vec<u8>, close: bool) -> Result<(), OpsError>;
    /// Closes a stream early (stops following logs; an exec keeps running without its output).
    async fn stream_close(stream: u64) -> Result<(), OpsError>;
    async fn load_image_begin() -> Result<u64, OpsError>;
    async fn load_image_chunk(upload: u64, data: Vec<u8>) -> Result<(), OpsError>;
    /// Finishes an upload; returns the loaded `name:tag`s.
    async fn load_image_end(upload: u64) -> Result<Vec<String>, OpsError>;
    async fn list_images() -> Result<Vec<ImageInfo>, OpsError>;
    async fn remove_image(name: String) -> Result<(), OpsError>;
    async fn create_volume(name: String) -> Result<VolumeInfo, OpsError>;
    async fn list_volumes() -> Result<Vec<VolumeInfo>, OpsError>;
    async fn inspect_volume(name: String) -> Result<VolumeInfo, OpsError>;
    async fn remove_volume(name: String) -> Result<(), OpsError>;
}

/// Connects to a machine's [`ContainerOps`] and introduces this machine.
pub async fn connect_container_ops(
    addr: std::net::SocketAddr,
    network_id: &str,
    from: &str,
) -> Result<ContainerOpsClient, OpsError> {
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|e| unreachable(addr, &e))?
    .map_err(|e| unreachable(addr, &e))?;
    container_ops_client(stream, network_id, from).await
}

/// A [`ContainerOps`] client on a connected stream, introduced as machine `from`.
pub async fn container_ops_client(
    stream: tokio::net::TcpStream,
    network_id: &str,
    from: &str,
) -> Result<ContainerOpsClient, OpsError> {
    let addr = stream
        .peer_addr()
        .map_err(|e| OpsError::new(ErrorKind::Unreachable, e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let transport = transport_capped(stream, CONTAINER_OPS_MAX_FRAME);
    let client = ContainerOpsClient::new(tarpc::client::Config::default(), transport).spawn();
    client
        .hello(
            tarpc::context::current(),
            network_id.to_string(),
            from.to_string(),
        )
        .await
        .map_err(|e| unreachable(addr, &e))??;
    Ok(client)
}

fn unreachable(addr: std::net::SocketAddr, e: &dyn std::fmt::Display) -> OpsError {
    OpsError::new(ErrorKind::Unreachable, format!("cannot reach {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tarpc::server::{BaseChannel, Channel};

    /// The same service as an older and a newer release define it: the newer one added a
    /// field to the request and one to the reply, both optional.
    mod old {
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        pub struct Hello {
            pub network_id: String,
            pub payload: Vec<u8>,
        }
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        pub struct Reply {
            pub accepted: bool,
        }
        #[tarpc::service]
        pub trait Greeter {
            async fn hello(hello: Hello) -> Reply;
        }
    }

    mod new {
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        pub struct Hello {
            pub network_id: String,
            pub payload: Vec<u8>,
            #[serde(default)]
            pub priority: Option<u32>,
        }
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        pub struct Reply {
            pub accepted: bool,
            #[serde(default)]
            pub note: String,
        }
        #[tarpc::service]
        pub trait Greeter {
            async fn hello(hello: Hello) -> Reply;
        }
    }

    #[derive(Clone)]
    struct OldServer;
    impl old::Greeter for OldServer {
        async fn hello(self, _: tarpc::context::Context, h: old::Hello) -> old::Reply {
            old::Reply {
                accepted: h.network_id == "net" && h.payload == [0, 200, 255],
            }
        }
    }

    #[derive(Clone)]
    struct NewServer;
    impl new::Greeter for NewServer {
        async fn hello(self, _: tarpc::context::Context, h: new::Hello) -> new::Reply {
            new::Reply {
                accepted: h.network_id == "net" && h.payload == [0, 200, 255],
                note: format!("priority {:?}", h.priority),
            }
        }
    }

    /// Serves one connection on a loopback port with `serve_conn`.
    async fn serve_one<F, Fut>(serve_conn: F) -> std::net::SocketAddr
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve_conn(stream).await;
        });
        addr
    }

    async fn serve_old(stream: tokio::net::TcpStream) {
        BaseChannel::with_defaults(transport(stream))
            .execute(old::Greeter::serve(OldServer))
            .for_each(|f| async move {
                tokio::spawn(f);
            })
            .await;
    }

    async fn serve_new(stream: tokio::net::TcpStream) {
        BaseChannel::with_defaults(transport(stream))
            .execute(new::Greeter::serve(NewServer))
            .for_each(|f| async move {
                tokio::spawn(f);
            })
            .await;
    }

    #[tokio::test]
    async fn an_old_and_a_new_peer_understand_each_other_both_ways() {
        // New client, old server: the added request field is ignored, the reply's added
        // field takes its default.
        let addr = serve_one(serve_old).await;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let client = new::GreeterClient::new(Default::default(), transport(stream)).spawn();
        let reply = client
            .hello(
                tarpc::context::current(),
                new::Hello {
                    network_id: "net".into(),
                    payload: vec![0, 200, 255],
                    priority: Some(3),
                },
            )
            .await
            .unwrap();
        assert!(reply.accepted);
        assert_eq!(reply.note, "");

        // Old client, new server: the field the old client does not send is None.
        let addr = serve_one(serve_new).await;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let client = old::GreeterClient::new(Default::default(), transport(stream)).spawn();
        let reply = client
            .hello(
                tarpc::context::current(),
                old::Hello {
                    network_id: "net".into(),
                    payload: vec![0, 200, 255],
                },
            )
            .await
            .unwrap();
        assert!(reply.accepted);
    }

    /// State sync as machines before the container tables spoke it.
    #[derive(Debug, Serialize, Deserialize)]
    struct SyncRequestBeforeTables {
        network_id: String,
        from: String,
        session: u64,
        message: Option<Vec<u8>>,
    }
    #[derive(Debug, Serialize, Deserialize)]
    struct SyncReplyBeforeTables {
        message: Option<Vec<u8>>,
    }

    #[test]
    fn sync_messages_with_tables_and_without_understand_each_other() {
        let new = SyncRequest {
            network_id: "n".into(),
            from: "m".into(),
            session: 1,
            message: Some(vec![1, 2]),
            more: false,
            tables: Some(TablesMessage {
                versions: [("m".to_string(), 7)].into(),
                deltas: vec![TableDelta {
                    machine_id: "m".into(),
                    since: 0,
                    version: 7,
                    rows: vec![TableRow {
                        version: 7,
                        container: crate::model::Container {
                            id: "c".into(),
                            machine_id: "m".into(),
                            ..Default::default()
                        },
                    }],
                    removed: vec![],
                }],
            }),
        };
        let old: SyncRequestBeforeTables = decode(&encode(&new).unwrap()).unwrap();
        assert_eq!(old.message, new.message);
        let back: SyncRequest = decode(&encode(&new).unwrap()).unwrap();
        assert_eq!(back.tables, new.tables);
        let from_old: SyncRequest = decode(&encode(&old).unwrap()).unwrap();
        assert_eq!(from_old.tables, None);
        let reply: SyncReply =
            decode(&encode(&SyncReplyBeforeTables { message: None }).unwrap()).unwrap();
        assert_eq!(reply.tables, None);
        let old_reply: SyncReplyBeforeTables = decode(
            &encode(&SyncReply {
                message: Some(vec![3]),
                tables: new.tables.clone(),
                more: false,
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(old_reply.message, Some(vec![3]));
    }

    #[test]
    fn bytes_travel_as_binary_and_garbage_is_an_error() {
        let request = SyncRequest {
            network_id: "n".into(),
            from: "m".into(),
            session: 1,
            message: Some(vec![0xff; 1000]),
            tables: None,
            more: false,
        };
        let wire = encode(&request).unwrap();
        // Binary, not an array of integers (which would take up to 2 bytes per byte).
        assert!(wire.len() < 1100, "{} bytes", wire.len());
        let back: SyncRequest = decode(&wire).unwrap();
        assert_eq!(back.message, request.message);
        for garbage in [&[][..], &[0xc1], &wire[..wire.len() / 2], b"\x81\xa3abc"] {
            assert!(decode::<SyncRequest>(garbage).is_err());
        }
    }
}
