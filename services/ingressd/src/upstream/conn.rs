//! One HTTP/1.1 connection to an upstream, driven by the request that uses it: the request
//! head is written and the response read on the request's own task, with no task, channel
//! or body queue between them.
//!
//! A response whose body has fully arrived with its head (nearly all small ones) is handed
//! over whole, and the connection can take the next request at once. Any other body is read
//! as the client takes it ([`Reader`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::chunked::{ChunkedError, Decoder, Step};
use super::framing::{keeps_alive, response_framing, Framing, FramingError};
use super::head::{parse_response, HeadError, ResponseHead, MAX_HEAD_BYTES};
use crate::idle::Idle;

/// Read buffer room made before each read.
const READ_ROOM: usize = 8 * 1024;
/// A whole body up to this size is copied out of the read buffer rather than split off it.
const COPY_AT_MOST: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Not a byte of the request was written.
    #[error("the connection failed before the request was written: {0}")]
    Unsent(io::Error),
    /// No byte of a response came back: the connection failed or closed as the request went
    /// out (a kept-alive connection the upstream had just closed, most often).
    #[error("the connection closed before any answer: {0}")]
    Unanswered(io::Error),
    #[error("the upstream sent nothing for too long")]
    TimedOut,
    #[error("the response ended early: {0}")]
    Truncated(io::Error),
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("the upstream switched protocols unasked")]
    Switched,
}

impl ExchangeError {
    /// Whether the request may be sent again: not a byte of it was written, or not a byte
    /// of the answer came back and `method` may be repeated.
    pub fn may_send_again(&self, method: &Method) -> bool {
        match self {
            ExchangeError::Unsent(_) => true,
            ExchangeError::Unanswered(_) => method.is_idempotent(),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the upstream sent nothing for too long")]
    TimedOut,
    #[error("the response body ended early: {0}")]
    Truncated(io::Error),
    #[error(transparent)]
    Chunked(#[from] ChunkedError),
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the upstream")
}

/// A connection to an upstream.
pub struct Conn {
    io: Idle<TcpStream>,
    read: BytesMut,
}

/// A response's body.
pub enum Got {
    /// All of it, and the connection if it can take another request.
    Whole(Bytes, Option<Conn>),
    /// Still arriving.
    Streaming(Reader),
}

impl Conn {
    /// `silence`: how long the upstream may send nothing while it has a request.
    pub fn new(stream: TcpStream, silence: Duration) -> Conn {
        Conn {
            io: Idle::new(stream, silence),
            read: BytesMut::new(),
        }
    }

    /// Whether a connection that sat idle can still take a request: the upstream neither
    /// closed it nor sent anything unasked. Costs no system call while the socket has had
    /// nothing new to read since its last response.
    pub fn is_reusable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let stream = self.io.get_mut();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends a request without a body, `head` (written by [`super::head::write_request`] or
    /// the client side's own writer), and reads the response head. Takes the connection and
    /// the head by reference: this future is part of every request's, and what it owns it
    /// carries.
    pub async fn exchange(
        &mut self,
        method: &Method,
        head: &[u8],
    ) -> Result<(ResponseHead, Framing, bool), ExchangeError> {
        self.io.touch();
        let mut written = 0;
        while written < head.len() {
            match self.io.write(&head[written..]).await {
                Ok(0) => return Err(ExchangeError::Unanswered(closed())),
                Ok(n) => written += n,
                Err(e) if crate::idle::is_timeout(&e) => return Err(ExchangeError::TimedOut),
                Err(e) if written == 0 => return Err(ExchangeError::Unsent(e)),
                Err(e) => return Err(ExchangeError::Unanswered(e)),
            }
        }
        let mut answered = false;
        // Interim responses count toward the head's limit: an upstream sending them forever
        // does not hold the request forever.
        let mut interim = 0;
        let head = loop {
            if !self.read.is_empty() {
                let before = self.read.len();
                if let Some(head) = parse_response(&mut self.read)? {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(ExchangeError::Switched);
                    }
                    // 100 Continue, 103 Early Hints: interim, dropped (as hyper's client does).
                    if head.status.is_informational() {
                        interim += before - self.read.len();
                        if interim > MAX_HEAD_BYTES {
                            return Err(HeadError::TooLarge.into());
                        }
                        continue;
                    }
                    break head;
                }
            }
            self.read.reserve(READ_ROOM);
            match tokio_util::io::read_buf(&mut self.io, &mut self.read).await {
                Ok(0) if answered => return Err(ExchangeError::Truncated(closed())),
                Ok(0) => return Err(ExchangeError::Unanswered(closed())),
                Ok(_) => answered = true,
                Err(e) if crate::idle::is_timeout(&e) => return Err(ExchangeError::TimedOut),
                Err(e) if answered => return Err(ExchangeError::Truncated(e)),
                Err(e) => return Err(ExchangeError::Unanswered(e)),
            }
        };
        let to_head = *method == Method::HEAD;
        let mut head = head;
        let framing = response_framing(to_head, head.status, head.version, &mut head.headers)?;
        // A response without a body that announces one (to HEAD, 204, 304) is not followed
        // by another on its connection: an upstream that sent the body anyway, late, would
        // have it read as the next client's response.
        let announced = framing == Framing::Empty
            && (head.headers.contains_key(header::TRANSFER_ENCODING)
                || head
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0"));
        let keep = !announced && keeps_alive(head.version, &head.headers);
        Ok((head, framing, keep))
    }

    /// The body of the response [`Conn::exchange`] read the head of: whole if it has all
    /// arrived, else a [`Reader`] that owns the connection.
    pub fn body(mut self, framing: Framing, keep: bool) -> Got {
        match framing {
            Framing::Empty => Got::Whole(Bytes::new(), self.reusable(keep)),
            Framing::Length(n) if self.read.len() as u64 >= n => {
                let n = n as usize;
                // A small body is copied so the read buffer is reused (see `parse_response`).
                let body = if n <= COPY_AT_MOST {
                    let body = Bytes::copy_from_slice(&self.read[..n]);
                    self.read.advance(n);
                    body
                } else {
                    self.read.split_to(n).freeze()
                };
                Got::Whole(body, self.reusable(keep))
            }
            Framing::Length(n) => Got::Streaming(Reader::new(self, Left::Length(n), keep)),
            Framing::Chunked => {
                Got::Streaming(Reader::new(self, Left::Chunked(Decoder::default()), keep))
            }
            Framing::UntilClose => Got::Streaming(Reader::new(self, Left::UntilClose, false)),
        }
    }

    /// The connection after a whole response, if it can take another: the upstream keeps
    /// it open and sent nothing past the response.
    fn reusable(self, keep: bool) -> Option<Conn> {
        (keep && self.read.is_empty()).then_some(self)
    }
}

enum Left {
    Length(u64),
    Chunked(Decoder),
    UntilClose,
    Done,
}

/// A response body read from its connection as the client takes it.
pub struct Reader {
    conn: Conn,
    left: Left,
    keep: bool,
}

impl Reader {
    fn new(conn: Conn, left: Left, keep: bool) -> Reader {
        Reader { conn, left, keep }
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.left, Left::Done | Left::Length(0))
    }

    /// Bytes still to come, when known.
    pub fn exact_left(&self) -> Option<u64> {
        match self.left {
            Left::Length(n) => Some(n),
            Left::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body; `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ReadError>>> {
        let read = &mut self.conn.read;
        loop {
            match &mut self.left {
                Left::Done => return Poll::Ready(None),
                Left::Length(0) => {
                    self.left = Left::Done;
                    return Poll::Ready(None);
                }
                Left::Length(n) if !read.is_empty() => {
                    let take = (*n).min(read.len() as u64);
                    *n -= take;
                    let data = read.split_to(take as usize).freeze();
                    if *n == 0 {
                        self.left = Left::Done;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Left::Chunked(d) => match d.step(read) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Step::End) => {
                        self.left = Left::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(e) => {
                        self.keep = false;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Left::UntilClose if !read.is_empty() => {
                    return Poll::Ready(Some(Ok(read.split().freeze())))
                }
                Left::Length(_) | Left::UntilClose => {}
            }
            read.reserve(READ_ROOM);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.conn.io), cx, read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if matches!(self.left, Left::UntilClose) {
                        self.left = Left::Done;
                        return Poll::Ready(None);
                    }
                    self.keep = false;
                    return Poll::Ready(Some(Err(ReadError::Truncated(closed()))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.keep = false;
                    let e = if crate::idle::is_timeout(&e) {
                        ReadError::TimedOut
                    } else {
                        ReadError::Truncated(e)
                    };
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    /// The connection, if the body was read to its end and it can take another request.
    pub fn into_reusable(self) -> Option<Conn> {
        let done = matches!(self.left, Left::Done);
        (done && self.keep && self.conn.read.is_empty()).then_some(self.conn)
    }
}
