//! The retry policy: which failures get another attempt, and how long to wait.
//!
//! 429s, 5xx, timeouts and broken connections (mid-stream included) are
//! retried up to `max_retries` times. The wait doubles from
//! `initial_backoff_ms` up to `max_backoff_secs`, with "equal jitter" (half
//! fixed, half random) so that clients that failed together do not come back
//! together, and it is never shorter than what the provider asked for with
//! `Retry-After`. A provider asking for more than `max_backoff_secs` ends the
//! retries at once: holding a reply that long belongs to a durable workflow's
//! sleep, not to a request in flight.

use std::time::Duration;

use rand::Rng;

use crate::config::LlmConfig;
use crate::error::LlmError;

/// A failed attempt: the error, and the wait the provider asked for.
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: LlmError,
    pub retry_after: Option<Duration>,
}

impl From<LlmError> for Failure {
    fn from(error: LlmError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

/// The backoff settings of one client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    pub initial: Duration,
    pub cap: Duration,
    pub max_retries: u32,
}

impl Backoff {
    pub(crate) fn from_config(config: &LlmConfig) -> Self {
        Self {
            initial: Duration::from_millis(config.initial_backoff_ms),
            cap: Duration::from_secs(config.max_backoff_secs),
            max_retries: config.max_retries,
        }
    }

    /// Attempts of one call, counted from the first.
    pub(crate) fn attempts(self) -> Attempts {
        Attempts {
            backoff: self,
            made: 0,
        }
    }

    /// The wait before retry number `retry` (1 for the first retry), at least
    /// `retry_after`; `None` when the failure must not be retried.
    pub(crate) fn wait(
        &self,
        retry: u32,
        failure: &Failure,
        jitter: &mut impl Rng,
    ) -> Option<Duration> {
        if retry > self.max_retries || !failure.error.is_retryable() {
            return None;
        }
        if failure.retry_after.is_some_and(|after| after > self.cap) {
            return None;
        }
        let doubling = 2u32.saturating_pow(retry.saturating_sub(1));
        let backoff = self.initial.saturating_mul(doubling).min(self.cap);
        let half = backoff / 2;
        let jittered = half + half.mul_f64(jitter.random::<f64>());
        Some(jittered.max(failure.retry_after.unwrap_or_default()))
    }
}

/// The attempts of one call.
#[derive(Debug)]
pub(crate) struct Attempts {
    backoff: Backoff,
    made: u32,
}

impl Attempts {
    /// Counts an attempt about to start.
    pub(crate) fn start(&mut self) {
        self.made += 1;
    }

    /// Attempts made so far.
    pub(crate) fn made(&self) -> u32 {
        self.made
    }

    /// After a failed attempt: how long to wait before the next one, or the
    /// error to return.
    pub(crate) fn after_failure(&self, what: &str, failure: Failure) -> Result<Duration, LlmError> {
        match self.backoff.wait(self.made, &failure, &mut rand::rng()) {
            Some(wait) => {
                tracing::warn!(
                    call = what,
                    attempt = self.made,
                    code = failure.error.code(),
                    error = %failure.error,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "model call failed; retrying",
                );
                Ok(wait)
            }
            None => Err(failure.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_retries: 4,
        }
    }

    fn status(status: u16, retry_after: Option<Duration>) -> Failure {
        Failure {
            error: LlmError::Status {
                status,
                message: String::new(),
            },
            retry_after,
        }
    }

    #[test]
    fn waits_double_with_jitter_up_to_the_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        let failure = Failure::from(LlmError::Timeout);
        for retry in 1..=4 {
            let full = Duration::from_millis(500) * 2u32.pow(retry - 1);
            let wait = backoff().wait(retry, &failure, &mut rng).expect("retried");
            assert!(wait >= full / 2 && wait <= full, "retry {retry}: {wait:?}");
        }
        let capped = Backoff {
            max_retries: 40,
            ..backoff()
        };
        let wait = capped.wait(30, &failure, &mut rng).expect("retried");
        assert!(wait <= Duration::from_secs(30), "{wait:?}");
    }

    #[test]
    fn never_shorter_than_retry_after() {
        let mut rng = StdRng::seed_from_u64(7);
        let wait = backoff()
            .wait(1, &status(429, Some(Duration::from_secs(3))), &mut rng)
            .expect("retried");
        assert_eq!(wait, Duration::from_secs(3));
    }

    #[test]
    fn what_is_not_retried() {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(backoff().wait(1, &status(400, None), &mut rng), None);
        assert_eq!(backoff().wait(5, &status(503, None), &mut rng), None);
        assert_eq!(
            backoff().wait(1, &status(429, Some(Duration::from_secs(31))), &mut rng),
            None
        );
        let malformed = Failure::from(LlmError::Malformed(String::new()));
        assert_eq!(backoff().wait(1, &malformed, &mut rng), None);
    }
}
