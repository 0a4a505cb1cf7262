//! The TLS listener: one tarpc channel per connection, JSON frames, the caller taken from the
//! TLS session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Json;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::LengthDelimitedCodec;
use uncloud_api::wire::MAX_FRAME_BYTES;
use uncloud_api::wire::{
    ActionReply, Answer, Api, ApiError, Call, CertRef, CertReply, CertRequest, CertRow,
    ContainerAction, FanOut, HistoryReply, InitReply, InitRequest, JoinReply, JoinRequest,
    MachineChange, MachineInfo, MachineRef, MachineRow, RedeemReply, RedeemRequest, RemoveReply,
    RenewRequest, RunReply, RunRequest, ScaleRequest, ServiceRef, TargetReply, TicketReply,
    TicketRequest, UpdateReply, UpdateRequest,
};
use uncloud_api::wire::{DrainReply, DrainRequest, PutFiles, PutFilesReply};
use uncloud_api::wire::{
    ExecBegin, ExecOutput, ExecRead, ExecRef, ExecResize, ExecStarted, ExecWrite,
};
use uncloud_api::wire::{PushBegin, PushChunk, PushProgress, PushRef, PushStarted};

use crate::api::{Apid, Caller};

/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;
/// Calls in flight on one connection.
const MAX_IN_FLIGHT: usize = 16;
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, apid: Arc<Apid>) {
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections; closing");
            continue;
        };
        let apid = apid.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(tcp, peer, apid).await;
        });
    }
}

async fn serve_connection(tcp: tokio::net::TcpStream, peer: SocketAddr, apid: Arc<Apid>) {
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(apid.server_tls());
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let local = stream
        .get_ref()
        .0
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    apid.refresh_trust().await;
    // A refused certificate still gets answers, each saying why (revoked, expired, …),
    // rather than a closed connection the client cannot explain.
    let caller = caller_of(&stream, &apid).unwrap_or_else(|reason| {
        tracing::warn!(%peer, %reason, "client certificate refused");
        Caller::Refused(reason)
    });
    tracing::debug!(%peer, ?caller, "connection");
    let _listed = apid.connections().register(peer, caller.clone());
    let framed = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_framed(stream);
    let transport = tarpc::serde_transport::new(framed, Json::default());
    let conn = Connection {
        apid,
        caller,
        local,
    };
    BaseChannel::with_defaults(transport)
        .max_concurrent_requests(MAX_IN_FLIGHT)
        .execute(conn.serve())
        .for_each(|response| async {
            tokio::spawn(response);
        })
        .await;
}

/// Who is calling, from the TLS session. rustls has checked the chain already; this adds the
/// role and the revocation list.
fn caller_of(
    stream: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    apid: &Apid,
) -> Result<Caller, String> {
    if apid.member().is_none() {
        return Ok(Caller::Maintenance);
    }
    let Some(cert) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        return Ok(Caller::Anonymous);
    };
    let info = uncloud_pki::check_client(
        cert.as_ref(),
        &apid.trusted_cas(),
        &apid.revoked(),
        OffsetDateTime::now_utc(),
    )
    .map_err(|r| r.to_string())?;
    Ok(Caller::Client {
        subject: info.subject,
        role: info.role.expect("check_client requires a role"),
        serial: info.serial,
    })
}

#[derive(Clone)]
struct Connection {
    apid: Arc<Apid>,
    caller: Caller,
    /// Our end of the connection: the address the client reached us at.
    local: SocketAddr,
}

impl Api for Connection {
    async fn init(
        self,
        _: tarpc::context::Context,
        request: InitRequest,
    ) -> Result<InitReply, ApiError> {
        self.apid.init(request).await
    }

    async fn info(self, _: tarpc::context::Context) -> Result<MachineInfo, ApiError> {
        self.apid.info(&self.caller).await
    }

    async fn machines(self, _: tarpc::context::Context) -> Result<Vec<MachineRow>, ApiError> {
        self.apid.machines(&self.caller).await
    }

    async fn join(
        self,
        _: tarpc::context::Context,
        request: JoinRequest,
    ) -> Result<JoinReply, ApiError> {
        self.apid.join(request).await
    }

    async fn issue_ticket(
        self,
        _: tarpc::context::Context,
        request: TicketRequest,
    ) -> Result<TicketReply, ApiError> {
        self.apid
            .issue_ticket(&self.caller, self.local, request)
            .await
    }

    async fn redeem(
        self,
        _: tarpc::context::Context,
        request: RedeemRequest,
    ) -> Result<RedeemReply, ApiError> {
        self.apid.redeem(request).await
    }

    async fn change_machine(
        self,
        _: tarpc::context::Context,
        request: MachineChange,
    ) -> Result<MachineRow, ApiError> {
        self.apid.change_machine(&self.caller, request).await
    }

    async fn remove_machine(
        self,
        _: tarpc::context::Context,
        request: MachineRef,
    ) -> Result<MachineRow, ApiError> {
        self.apid.remove_machine(&self.caller, request).await
    }

    async fn issue_cert(
        self,
        _: tarpc::context::Context,
        request: CertRequest,
    ) -> Result<CertReply, ApiError> {
        self.apid.issue_cert(&self.caller, request).await
    }

    async fn renew_cert(
        self,
        _: tarpc::context::Context,
        request: RenewRequest,
    ) -> Result<CertReply, ApiError> {
        self.apid.renew_cert(&self.caller, request).await
    }

    async fn certs(self, _: tarpc::context::Context) -> Result<Vec<CertRow>, ApiError> {
        self.apid.certs(&self.caller).await
    }

    async fn revoke_cert(
        self,
        _: tarpc::context::Context,
        request: CertRef,
    ) -> Result<Vec<CertRow>, ApiError> {
        self.apid.revoke_cert(&self.caller, request).await
    }

    async fn fan_out(
        self,
        _: tarpc::context::Context,
        request: FanOut,
    ) -> Result<Vec<TargetReply>, ApiError> {
        self.apid.fan_out(&self.caller, request).await
    }

    async fn call(self, _: tarpc::context::Context, call: Call) -> Result<Answer, ApiError> {
        self.apid.dispatch(&self.caller, call).await
    }

    async fn run(
        self,
        _: tarpc::context::Context,
        request: RunRequest,
    ) -> Result<RunReply, ApiError> {
        self.apid.run_service(&self.caller, request).await
    }

    async fn remove_service(
        self,
        _: tarpc::context::Context,
        request: ServiceRef,
    ) -> Result<RemoveReply, ApiError> {
        self.apid.remove_service(&self.caller, request).await
    }

    async fn scale(
        self,
        _: tarpc::context::Context,
        request: ScaleRequest,
    ) -> Result<RunReply, ApiError> {
        self.apid.scale_service(&self.caller, request).await
    }

    async fn update(
        self,
        _: tarpc::context::Context,
        request: UpdateRequest,
    ) -> Result<UpdateReply, ApiError> {
        self.apid.update_service(&self.caller, request).await
    }

    async fn history(
        self,
        _: tarpc::context::Context,
        request: ServiceRef,
    ) -> Result<HistoryReply, ApiError> {
        self.apid.service_history(&self.caller, request).await
    }

    async fn container_action(
        self,
        _: tarpc::context::Context,
        request: ContainerAction,
    ) -> Result<ActionReply, ApiError> {
        self.apid.container_action(&self.caller, request).await
    }

    async fn push_begin(
        self,
        _: tarpc::context::Context,
        request: PushBegin,
    ) -> Result<PushStarted, ApiError> {
        self.apid.push_begin(&self.caller, request).await
    }

    async fn push_chunk(
        self,
        _: tarpc::context::Context,
        request: PushChunk,
    ) -> Result<PushProgress, ApiError> {
        self.apid.push_chunk(&self.caller, request).await
    }

    async fn push_end(
        self,
        _: tarpc::context::Context,
        request: PushRef,
    ) -> Result<PushProgress, ApiError> {
        self.apid.push_end(&self.caller, request).await
    }

    async fn push_abort(
        self,
        _: tarpc::context::Context,
        request: PushRef,
    ) -> Result<(), ApiError> {
        self.apid.push_abort(&self.caller, request).await
    }

    async fn drain_machine(
        self,
        _: tarpc::context::Context,
        request: DrainRequest,
    ) -> Result<DrainReply, ApiError> {
        self.apid.drain_machine(&self.caller, request).await
    }

    async fn exec_begin(
        self,
        _: tarpc::context::Context,
        request: ExecBegin,
    ) -> Result<ExecStarted, ApiError> {
        self.apid.exec_begin(&self.caller, request).await
    }

    async fn exec_read(
        self,
        _: tarpc::context::Context,
        request: ExecRead,
    ) -> Result<ExecOutput, ApiError> {
        self.apid.exec_read(&self.caller, request).await
    }

    async fn exec_write(
        self,
        _: tarpc::context::Context,
        request: ExecWrite,
    ) -> Result<(), ApiError> {
        self.apid.exec_write(&self.caller, request).await
    }

    async fn exec_resize(
        self,
        _: tarpc::context::Context,
        request: ExecResize,
    ) -> Result<(), ApiError> {
        self.apid.exec_resize(&self.caller, request).await
    }

    async fn exec_end(self, _: tarpc::context::Context, request: ExecRef) -> Result<(), ApiError> {
        self.apid.exec_end(&self.caller, request).await
    }

    async fn put_files(
        self,
        _: tarpc::context::Context,
        request: PutFiles,
    ) -> Result<PutFilesReply, ApiError> {
        self.apid.put_files(&self.caller, request).await
    }
}
