//! HTTP/1.1 to upstreams, on the request's own task.
//!
//! # Background
//! hyper's client runs each upstream connection as a task of its own: a request is handed
//! to it over a channel, its response comes back over another, and its body over a third.
//! For a proxy answering small requests that hand-over was a third of its user CPU time.
//!
//! # Design
//! A request without a body (nearly all: GET, HEAD, DELETE) is written and its response read
//! by the task serving the client ([`conn`]). The pieces are pure and tested alone: the heads
//! ([`head`]), where a response body ends ([`framing`]) and the chunked coding
//! ([`chunked`]). Requests with a body, and upgrades, still go through hyper's client.
//!
//! # Limitations
//! Only requests without a body take this path. Trailer fields of a chunked response are
//! dropped (as nginx does). Anything ambiguous in a response's framing is a 502 and the
//! connection is dropped rather than guessed at.

pub mod chunked;
pub mod conn;
pub mod framing;
pub mod head;

pub use conn::{Conn, ExchangeError, Got, ReadError, Reader};
