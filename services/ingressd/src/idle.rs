//! A stream that fails with `TimedOut` once no byte moved either way for a while: the idle
//! timeout of client connections, and the response timeout of upstream connections (an
//! upstream that sends nothing for that long while a request is out gets a 504).
//!
//! One timer per connection, not per request, and no clock read on each read or write:
//! progress only sets a flag, and the timer ticks four times per timeout. A connection is
//! timed out after four ticks in a row with nothing moved, so silence is noticed between
//! one and one and a quarter timeouts after the last byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Ticks of the timer per timeout.
const TICKS: u32 = 4;

/// A stream that fails with `TimedOut` once no byte moved either way for `timeout`.
pub struct Idle<S> {
    inner: S,
    /// A quarter of the timeout: how far apart the ticks are.
    tick: Duration,
    /// A byte moved since the last tick.
    moved: bool,
    /// Ticks in a row with nothing moved.
    quiet: u32,
    deadline: Pin<Box<Sleep>>,
    /// The task the timer wakes (so a connection polled by one task, as nearly all are,
    /// registers with the timer once, not on every read that has to wait).
    waker: Option<Waker>,
}

impl<S> Idle<S> {
    pub fn new(inner: S, timeout: Duration) -> Idle<S> {
        let tick = timeout / TICKS;
        Idle {
            inner,
            tick,
            moved: false,
            quiet: 0,
            deadline: Box::pin(tokio::time::sleep(tick)),
            waker: None,
        }
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Starts the silence over: a connection that sat unused in a pool is not yet silent
    /// when its next request goes out.
    pub fn touch(&mut self) {
        self.moved = true;
        self.quiet = 0;
    }

    fn moved(&mut self) {
        self.moved = true;
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let same_task = self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if same_task && !self.deadline.is_elapsed() {
            return false;
        }
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                if !same_task {
                    self.waker = Some(cx.waker().clone());
                }
                return false;
            }
            if std::mem::take(&mut self.moved) {
                self.quiet = 0;
            } else {
                self.quiet += 1;
                if self.quiet >= TICKS {
                    return true;
                }
            }
            self.deadline.as_mut().reset(Instant::now() + self.tick);
        }
    }
}

/// Whether `e` (or what caused it) is a timeout: an [`Idle`] one, or the kernel's.
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "idle for too long")
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if self.expired(cx) {
                    Poll::Ready(Err(timed_out()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.expired(cx) {
                    Poll::Ready(Err(timed_out()))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
