//! The retry policy: which failures get another attempt, and how long to wait.
//!
//! 429s, 5xx (but a 501, and a 500 that refuses the request's content),
//! timeouts and broken connections (mid-stream included) are retried up to
//! `max_retries` times. The wait doubles from `initial_backoff_ms` up to
//! `max_backoff_secs`, with "equal jitter" (half fixed, half random) so
//! that clients that failed together do not come back together, and it is
//! never shorter than what the provider asked for with `Retry-After`. A
//! provider asking for more than `max_backoff_secs` ends the retries at
//! once: holding a reply that long belongs to a durable workflow's sleep,
//! not to a request in flight. No retry starts that the call's total
//! budget (`total_timeout_secs`) would not leave time for.

use std::time::{Duration, Instant};

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

/// Why a call stops retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// The failure would happen again.
    NotRetryable,
    /// `max_retries` retries were made.
    RetriesExhausted,
    /// The provider asked for a wait longer than the backoff cap.
    RetryAfterTooLong,
    /// The call's total budget has no room for the wait and another try.
    BudgetSpent,
}

impl GiveUp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GiveUp::NotRetryable => "the failure is not one a retry can fix",
            GiveUp::RetriesExhausted => "every retry failed",
            GiveUp::RetryAfterTooLong => "the provider asked to wait longer than the backoff cap",
            GiveUp::BudgetSpent => "the call's total time budget ran out",
        }
    }
}

/// The backoff settings of one client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    pub initial: Duration,
    pub cap: Duration,
    pub max_retries: u32,
    /// The whole call's budget, every attempt and wait included.
    pub total: Duration,
}

impl Backoff {
    pub(crate) fn from_config(config: &LlmConfig) -> Self {
        Self {
            initial: Duration::from_millis(config.initial_backoff_ms),
            cap: Duration::from_secs(config.max_backoff_secs),
            max_retries: config.max_retries,
            total: Duration::from_secs(config.total_timeout_secs),
        }
    }

    /// Attempts of one call, counted from the first, starting now.
    pub(crate) fn attempts(self) -> Attempts {
        Attempts {
            backoff: self,
            made: 0,
            started: Instant::now(),
            deadline: tokio::time::Instant::now() + self.total,
        }
    }

    /// The wait before retry number `retry` (1 for the first retry), at least
    /// `retry_after`; why not, when the failure must not be retried.
    pub(crate) fn wait(
        &self,
        retry: u32,
        failure: &Failure,
        jitter: &mut impl Rng,
    ) -> Result<Duration, GiveUp> {
        if !failure.error.is_retryable() {
            return Err(GiveUp::NotRetryable);
        }
        if retry > self.max_retries {
            return Err(GiveUp::RetriesExhausted);
        }
        if failure.retry_after.is_some_and(|after| after > self.cap) {
            return Err(GiveUp::RetryAfterTooLong);
        }
        let doubling = 2u32.saturating_pow(retry.saturating_sub(1));
        let backoff = self.initial.saturating_mul(doubling).min(self.cap);
        let half = backoff / 2;
        let jittered = half + half.mul_f64(jitter.random::<f64>());
        Ok(jittered.max(failure.retry_after.unwrap_or_default()))
    }
}

/// The attempts of one call.
#[derive(Debug)]
pub(crate) struct Attempts {
    backoff: Backoff,
    made: u32,
    started: Instant,
    /// When the call's total budget runs out.
    deadline: tokio::time::Instant,
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

    /// When the call's total budget runs out: no attempt outlives it.
    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// The call's total budget.
    pub(crate) fn budget(&self) -> Duration {
        self.backoff.total
    }

    /// Time since the call began.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// After a failed attempt: how long to wait before the next one, or the
    /// error to return and why.
    pub(crate) fn after_failure(
        &self,
        what: &str,
        model: &str,
        failure: Failure,
    ) -> Result<Duration, (LlmError, GiveUp)> {
        let wait = match self.backoff.wait(self.made, &failure, &mut rand::rng()) {
            Ok(wait) => wait,
            Err(why) => return Err((failure.error, why)),
        };
        // A retry that could not even start before the budget runs out is
        // not worth the wait.
        if tokio::time::Instant::now() + wait >= self.deadline {
            return Err((failure.error, GiveUp::BudgetSpent));
        }
        tracing::warn!(
            call = what,
            model,
            attempt = self.made,
            code = failure.error.code(),
            error = %failure.error,
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "model call failed; retrying",
        );
        Ok(wait)
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
            total: Duration::from_secs(180),
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

    fn timeout() -> Failure {
        Failure::from(LlmError::Timeout(String::new()))
    }

    #[test]
    fn waits_double_with_jitter_up_to_the_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        let failure = timeout();
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
        let wait = |retry, failure: &Failure, rng: &mut StdRng| backoff().wait(retry, failure, rng);
        assert_eq!(
            wait(1, &status(400, None), &mut rng),
            Err(GiveUp::NotRetryable)
        );
        assert_eq!(
            wait(1, &status(501, None), &mut rng),
            Err(GiveUp::NotRetryable)
        );
        assert_eq!(
            wait(5, &status(503, None), &mut rng),
            Err(GiveUp::RetriesExhausted)
        );
        assert_eq!(
            wait(1, &status(429, Some(Duration::from_secs(31))), &mut rng),
            Err(GiveUp::RetryAfterTooLong)
        );
        let malformed = Failure::from(LlmError::Malformed(String::new()));
        assert_eq!(wait(1, &malformed, &mut rng), Err(GiveUp::NotRetryable));
        let rejected = Failure::from(LlmError::Rejected {
            status: 500,
            message: "Failed to parse tool call arguments as JSON".to_owned(),
        });
        assert_eq!(wait(1, &rejected, &mut rng), Err(GiveUp::NotRetryable));
    }

    #[tokio::test]
    async fn no_retry_past_the_total_budget() {
        let tight = Backoff {
            initial: Duration::from_secs(2),
            total: Duration::from_secs(1),
            ..backoff()
        };
        let mut attempts = tight.attempts();
        attempts.start();
        let (_, why) = attempts
            .after_failure("chat", "m", timeout())
            .expect_err("no time left for a retry");
        assert_eq!(why, GiveUp::BudgetSpent);
        let mut roomy = backoff().attempts();
        roomy.start();
        assert!(roomy.after_failure("chat", "m", timeout()).is_ok());
    }
}
