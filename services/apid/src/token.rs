//! The one-time setup token: compared in constant time, and wrong guesses cost time.

/// Whether `given` equals `expected`, in time that does not depend on where they differ.
pub fn matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.trim().as_bytes(), expected.trim().as_bytes());
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Milliseconds on a monotonic clock.
pub type Millis = u64;

/// Exponential backoff after failed attempts, for the whole machine (an attacker has many
/// source addresses): after n failures in a row the next attempt waits 2^(n-1) s, at most
/// `max`. A success resets it.
#[derive(Debug, Clone)]
pub struct Limiter {
    failures: u32,
    not_before: Millis,
    max: Millis,
}

impl Limiter {
    pub fn new(max: Millis) -> Limiter {
        Limiter {
            failures: 0,
            not_before: 0,
            max,
        }
    }

    /// `Err(ms to wait)` while an attempt is not allowed.
    pub fn check(&self, now: Millis) -> Result<(), Millis> {
        if now < self.not_before {
            Err(self.not_before - now)
        } else {
            Ok(())
        }
    }

    pub fn failed(&mut self, now: Millis) {
        self.failures = self.failures.saturating_add(1);
        let delay = 1_000u64
            .saturating_mul(1u64 << (self.failures - 1).min(32))
            .min(self.max);
        self.not_before = now.saturating_add(delay);
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.not_before = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly_modulo_surrounding_whitespace() {
        assert!(matches("abc-123", "abc-123\n"));
        assert!(!matches("abc-124", "abc-123"));
        assert!(!matches("abc-12", "abc-123"));
        assert!(!matches("", ""));
    }

    #[test]
    fn failures_double_the_wait_up_to_the_cap_and_success_resets() {
        let mut l = Limiter::new(10_000);
        assert_eq!(l.check(0), Ok(()));
        l.failed(0);
        assert_eq!(l.check(500), Err(500));
        assert_eq!(l.check(1_000), Ok(()));
        l.failed(1_000);
        assert_eq!(l.check(1_000), Err(2_000));
        for _ in 0..50 {
            l.failed(5_000);
        }
        assert_eq!(l.check(5_000), Err(10_000));
        l.succeeded();
        assert_eq!(l.check(5_000), Ok(()));
    }
}
