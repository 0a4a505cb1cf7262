//! The header timeout of a client connection: a request head must be complete within the
//! limit of when it was first waited for (on a kept-alive connection, from the end of the
//! previous response, as hyper counts it).
//!
//! One timer per connection, moved only when it fires: starting a head costs a clock read,
//! not a timer registration.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

pub struct HeadDeadline {
    limit: Duration,
    started: Instant,
    timer: Pin<Box<Sleep>>,
}

impl HeadDeadline {
    pub fn new(limit: Duration) -> HeadDeadline {
        let now = Instant::now();
        HeadDeadline {
            limit,
            started: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }

    /// A new head is waited for from now.
    pub fn start(&mut self) {
        self.started = Instant::now();
    }

    /// Ready once the head waited for since [`HeadDeadline::start`] is late.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.timer.as_mut().poll(cx));
            let due = self.started + self.limit;
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn a_head_is_late_a_limit_after_it_was_started_however_often_started() {
        let limit = Duration::from_millis(200);
        let mut d = HeadDeadline::new(limit);
        // Heads started every 100 ms, past the first timer's 200 ms: none is late.
        for _ in 0..4 {
            tokio::time::sleep(limit / 2).await;
            d.start();
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(d.poll_expired(&mut cx).is_pending());
        }
        let begun = std::time::Instant::now();
        poll_fn(|cx| d.poll_expired(cx)).await;
        let waited = begun.elapsed();
        assert!(waited >= limit - Duration::from_millis(5), "{waited:?}");
        assert!(waited < limit * 5, "{waited:?}");
    }
}
