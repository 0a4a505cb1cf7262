//! A stream that fails with `TimedOut` once no byte moved either way for a while: the idle
//! timeout of client connections, and the response timeout of upstream connections (an
//! upstream that sends nothing for that long while a request is out gets a 504).
//!
//! One timer per connection, not per request: progress only notes the time, and the timer is
//! moved when it fires early, so a busy connection costs a clock read per read or write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A stream that fails with `TimedOut` once no byte moved either way for `timeout`.
pub struct Idle<S> {
    inner: S,
    timeout: Duration,
    last: Instant,
    deadline: Pin<Box<Sleep>>,
    /// The task the timer wakes (so a connection polled by one task, as nearly all are,
    /// registers with the timer once, not on every read that has to wait).
    waker: Option<Waker>,
}

impl<S> Idle<S> {
    pub fn new(inner: S, timeout: Duration) -> Idle<S> {
        Idle {
            inner,
            timeout,
            last: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(timeout)),
            waker: None,
        }
    }

    fn moved(&mut self) {
        self.last = Instant::now();
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
            let due = self.last + self.timeout;
            if Instant::now() >= due {
                return true;
            }
            self.deadline.as_mut().reset(due);
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
