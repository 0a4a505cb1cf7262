//! `uc exec`: a command in a container on any machine, its input and output relayed by this
//! machine's apid.
//!
//! `exec_begin` starts the command by the container's machine's dockerd-shim
//! ([`crate::engines::Engine::exec`]: another machine's stream over the mesh, this machine's
//! pipes over D-Bus) and keeps a session here, owned by the client certificate that began it.
//! The client long-polls `exec_read` for output and sends `exec_write` and `exec_resize`
//! alongside on the same connection. A session nobody reads for [`IDLE`] is dropped (a `uc`
//! that was killed), which closes the command's input and output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::sync::mpsc::error::TryRecvError;
use uncloud_api::exec::{
    ExecBegin, ExecEnd, ExecOutput, ExecRead, ExecRef, ExecResize, ExecStarted, ExecWrite,
    EXEC_MAX_WAIT_MS, EXEC_READ_BYTES, EXEC_WRITE_BYTES,
};
use uncloud_api::wire::{ApiError, ErrorKind};
use uncloud_common::docker::{ErrorKind as OpsKind, ExecRequest, OpsError};
use uncloud_pki::Role;

use crate::api::{Apid, Caller};
use crate::engines::{ExecEvent, ExecInput};

/// A session nobody read for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(60);
/// Sessions through one machine at once.
const MAX_SESSIONS: usize = 64;

struct Session {
    /// The serial of the certificate that began it: only its holder uses it.
    owner: String,
    input: tokio::sync::mpsc::Sender<ExecInput>,
    output: tokio::sync::Mutex<Output>,
    touched: Mutex<Instant>,
}

struct Output {
    events: tokio::sync::mpsc::Receiver<ExecEvent>,
    /// How it ended, once read: later reads say it again.
    end: Option<ExecEnd>,
}

type Sessions = Mutex<HashMap<u64, Arc<Session>>>;

fn sessions() -> &'static Sessions {
    static SESSIONS: OnceLock<Sessions> = OnceLock::new();
    SESSIONS.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<u64, Arc<Session>>> {
    sessions().lock().unwrap_or_else(|p| p.into_inner())
}

/// Drops the sessions nobody read for [`IDLE`]. apid runs it every few seconds.
pub fn sweep() {
    lock().retain(|id, s| {
        let idle = s
            .touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            > IDLE;
        if idle {
            tracing::info!(session = id, "exec session abandoned: dropped");
        }
        !idle
    });
}

fn owner(caller: &Caller) -> String {
    match caller {
        Caller::Client { serial, .. } => serial.clone(),
        _ => String::new(),
    }
}

fn find(caller: &Caller, session: u64) -> Result<Arc<Session>, ApiError> {
    let s = lock().get(&session).cloned();
    match s {
        Some(s) if s.owner == owner(caller) => {
            *s.touched.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            Ok(s)
        }
        _ => Err(ApiError::new(
            ErrorKind::NotFound,
            format!(
                "no exec session {session} here (it ended, or nobody read it for {} s)",
                IDLE.as_secs()
            ),
        )),
    }
}

fn api_error(machine: &str, e: OpsError) -> ApiError {
    let kind = match e.kind {
        OpsKind::NotFound => ErrorKind::NotFound,
        OpsKind::InvalidArgument => ErrorKind::Invalid,
        OpsKind::Conflict => ErrorKind::Conflict,
        OpsKind::Unreachable => ErrorKind::Unreachable,
        _ => ErrorKind::Other,
    };
    ApiError::new(kind, format!("{machine}: {}", e.message))
}

/// Output events as a reply, at most [`EXEC_READ_BYTES`] of output. Pure.
fn reply(events: Vec<ExecEvent>) -> ExecOutput {
    let mut chunks: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut end = None;
    for e in events {
        match e {
            // Consecutive output of one stream travels as one chunk.
            ExecEvent::Output { stderr, data } => match chunks.last_mut() {
                Some((s, bytes)) if *s == stderr => bytes.extend_from_slice(&data),
                _ => chunks.push((stderr, data)),
            },
            ExecEvent::End(Ok(code)) => {
                end = Some(ExecEnd {
                    exit_code: Some(code),
                    error: String::new(),
                })
            }
            ExecEvent::End(Err(error)) => {
                end = Some(ExecEnd {
                    exit_code: None,
                    error,
                })
            }
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    ExecOutput {
        chunks: chunks
            .into_iter()
            .map(|(s, bytes)| (s, b64.encode(bytes)))
            .collect(),
        end,
    }
}

impl Apid {
    pub async fn exec_begin(
        &self,
        caller: &Caller,
        req: ExecBegin,
    ) -> Result<ExecStarted, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        if req.command.is_empty() {
            return Err(ApiError::new(ErrorKind::Invalid, "no command to run"));
        }
        sweep();
        if lock().len() >= MAX_SESSIONS {
            return Err(ApiError::new(
                ErrorKind::Unreachable,
                format!(
                    "{MAX_SESSIONS} exec sessions are open through this machine: try again later"
                ),
            ));
        }
        let machines = self.read_machines().await?;
        let m = match crate::fanout::resolve(&machines, std::slice::from_ref(&req.machine)).pop() {
            Some(Ok(m)) => m,
            _ => {
                return Err(ApiError::new(
                    ErrorKind::NotFound,
                    format!("no machine named {:?} (see `uc machine ls`)", req.machine),
                ))
            }
        };
        let cidr = self.mesh_cidr().await?;
        let request = ExecRequest {
            cmd: req.command.clone(),
            tty: req.tty,
            stdin: req.stdin,
            env: req.env.clone(),
            user: req.user.clone(),
            working_dir: req.working_dir.clone(),
        };
        let io = async {
            let engine = self.engine(&member, &cidr, &m).await?;
            engine
                .exec(&req.container, &request, (req.height, req.width))
                .await
        }
        .await
        .map_err(|e| api_error(&m.name, e))?;
        let session = rand::random::<u64>() >> 1;
        tracing::info!(session, machine = %m.name, container = %req.container, tty = req.tty, "exec");
        lock().insert(
            session,
            Arc::new(Session {
                owner: owner(caller),
                input: io.input,
                output: tokio::sync::Mutex::new(Output {
                    events: io.output,
                    end: None,
                }),
                touched: Mutex::new(Instant::now()),
            }),
        );
        Ok(ExecStarted { session })
    }

    pub async fn exec_read(&self, caller: &Caller, req: ExecRead) -> Result<ExecOutput, ApiError> {
        self.require(caller, Role::Admin)?;
        let s = find(caller, req.session)?;
        // One reader at a time; a second waits for the first.
        let mut out = s.output.lock().await;
        if let Some(end) = &out.end {
            return Ok(ExecOutput {
                chunks: Vec::new(),
                end: Some(end.clone()),
            });
        }
        let wait = Duration::from_millis(req.wait_ms.min(EXEC_MAX_WAIT_MS).into());
        let mut events = Vec::new();
        match tokio::time::timeout(wait, out.events.recv()).await {
            Err(_) => return Ok(ExecOutput::default()),
            Ok(None) => events.push(ExecEvent::End(Err("the session ended".into()))),
            Ok(Some(e)) => events.push(e),
        }
        let mut bytes = 0;
        while bytes < EXEC_READ_BYTES && !matches!(events.last(), Some(ExecEvent::End(_))) {
            match out.events.try_recv() {
                Ok(e) => {
                    if let ExecEvent::Output { data, .. } = &e {
                        bytes += data.len();
                    }
                    events.push(e);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    events.push(ExecEvent::End(Err("the session ended".into())))
                }
            }
        }
        let reply = reply(events);
        out.end = reply.end.clone();
        *s.touched.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Ok(reply)
    }

    pub async fn exec_write(&self, caller: &Caller, req: ExecWrite) -> Result<(), ApiError> {
        self.require(caller, Role::Admin)?;
        let s = find(caller, req.session)?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(&req.data)
            .map_err(|e| {
                ApiError::new(ErrorKind::Invalid, format!("the input is not base64: {e}"))
            })?;
        if data.len() > EXEC_WRITE_BYTES {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                format!("at most {EXEC_WRITE_BYTES} bytes of input at once"),
            ));
        }
        let gone = || ApiError::new(ErrorKind::NotFound, "the command has ended");
        if !data.is_empty() {
            s.input
                .send(ExecInput::Data(data))
                .await
                .map_err(|_| gone())?;
        }
        if req.close {
            s.input.send(ExecInput::Close).await.map_err(|_| gone())?;
        }
        Ok(())
    }

    pub async fn exec_resize(&self, caller: &Caller, req: ExecResize) -> Result<(), ApiError> {
        self.require(caller, Role::Admin)?;
        let s = find(caller, req.session)?;
        if req.height == 0 || req.width == 0 {
            return Err(ApiError::new(ErrorKind::Invalid, "a terminal of no size"));
        }
        s.input
            .send(ExecInput::Resize(req.height, req.width))
            .await
            .map_err(|_| ApiError::new(ErrorKind::NotFound, "the command has ended"))
    }

    pub async fn exec_end(&self, caller: &Caller, req: ExecRef) -> Result<(), ApiError> {
        self.require(caller, Role::Admin)?;
        find(caller, req.session)?;
        lock().remove(&req.session);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_of_one_stream_travels_as_one_chunk_in_order() {
        let out = |stderr, data: &[u8]| ExecEvent::Output {
            stderr,
            data: data.to_vec(),
        };
        let r = reply(vec![
            out(false, b"a"),
            out(false, b"b"),
            out(true, b"oops"),
            out(false, b"c"),
            ExecEvent::End(Ok(3)),
        ]);
        let b64 = base64::engine::general_purpose::STANDARD;
        let chunks: Vec<(bool, Vec<u8>)> = r
            .chunks
            .iter()
            .map(|(s, t)| (*s, b64.decode(t).unwrap()))
            .collect();
        assert_eq!(
            chunks,
            vec![
                (false, b"ab".to_vec()),
                (true, b"oops".to_vec()),
                (false, b"c".to_vec())
            ]
        );
        assert_eq!(r.end.unwrap().exit_code, Some(3));
    }
}
