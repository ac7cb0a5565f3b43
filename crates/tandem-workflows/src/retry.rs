//! Retry policies: how often an action is tried, and how long to wait.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How a step's action is retried: up to `max_attempts` tries, waiting an
/// exponentially growing backoff with full jitter between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// The backoff before the second try, in milliseconds.
    pub initial_backoff_ms: u64,
    /// The largest backoff, in milliseconds.
    pub max_backoff_ms: u64,
    /// Each backoff is the one before times this.
    pub multiplier: f64,
    /// The fraction of each backoff that is random (0: none, 1: "full
    /// jitter"), so that many failing runs do not retry in lockstep.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(62) as i32;
        let base = (self.initial_backoff_ms as f64) * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max_backoff_ms as f64).max(0.0);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let random = if jitter > 0.0 {
            rand::rng().random_range(0.0..=jitter)
        } else {
            0.0
        };
        Duration::from_millis((capped * (1.0 - random)) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap_and_jitter_only_shortens_it() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            multiplier: 2.0,
            jitter: 0.0,
        };
        let waits: Vec<u64> = (1..=6)
            .map(|a| policy.backoff(a).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);

        let jittered = RetryPolicy {
            jitter: 0.5,
            ..policy
        };
        for _ in 0..200 {
            let wait = jittered.backoff(3).as_millis() as u64;
            assert!((200..=400).contains(&wait), "{wait} ms");
        }
    }
}
