//! A token bucket, the one rate limit of the code base (a member's packets and bytes in the
//! room, a socket's `ice::` frames in front): `rate` tokens a second, at most `burst` banked,
//! full at the start. Time comes in as the elapsed time, so it stays a plain value.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
        }
    }

    /// Adds what `elapsed` earned, up to the burst.
    pub fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + self.rate * elapsed.as_secs_f64()).min(self.burst);
    }

    /// Whether `n` tokens are there.
    pub fn has(&self, n: f64) -> bool {
        self.tokens >= n
    }

    /// Takes `n` tokens (after [`TokenBucket::has`] said they are there).
    pub fn take(&mut self, n: f64) {
        self.tokens -= n;
    }

    /// Takes `n` tokens if they are there.
    pub fn try_take(&mut self, n: f64) -> bool {
        let ok = self.has(n);
        if ok {
            self.take(n);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_then_the_rate() {
        let mut b = TokenBucket::new(20, 40);
        assert!((0..40).all(|_| b.try_take(1.0)));
        assert!(!b.try_take(1.0));
        b.refill(Duration::from_millis(50));
        assert!(b.try_take(1.0));
        assert!(!b.try_take(1.0));
        // A long pause banks the burst, no more.
        b.refill(Duration::from_secs(60));
        assert!((0..40).all(|_| b.try_take(1.0)));
        assert!(!b.has(1.0));
    }
}
