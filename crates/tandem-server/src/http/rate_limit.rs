//! Per-caller rate limits: a token bucket per token (by its kind's quota) and
//! per client address for requests without a valid token (the address a
//! trusted proxy gives, see [`crate::net::client`]; an IPv6 client's /64). One caller's flood
//! is answered with 429 and `Retry-After` without slowing anyone else.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};
use tandem_model::TokenId;

use super::Principal;
use crate::config::{Quota, RateLimitConfig};

/// Above this many tracked keys, idle ones are forgotten.
const MAX_TRACKED_KEYS: usize = 100_000;

pub struct RateLimits {
    admin: Option<DefaultKeyedRateLimiter<TokenId>>,
    agent: Option<DefaultKeyedRateLimiter<TokenId>>,
    customer: Option<DefaultKeyedRateLimiter<TokenId>>,
    anonymous: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            admin: limiter(config.admin),
            agent: limiter(config.agent),
            customer: limiter(config.customer),
            anonymous: limiter(config.anonymous),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when the token has used up its quota.
    pub fn check_token(&self, principal: &Principal) -> Result<(), Duration> {
        let limiter = match principal {
            Principal::Admin { .. } => &self.admin,
            Principal::Agent { .. } => &self.agent,
            Principal::Customer { .. } => &self.customer,
        };
        self.check(limiter, &principal.token_id())
    }

    /// `Err(wait)` when this address (an IPv6 client: its /64) has sent too
    /// many unauthenticated requests.
    pub fn check_anonymous(&self, client: IpAddr) -> Result<(), Duration> {
        self.check(&self.anonymous, &crate::net::address_key(client))
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &Option<DefaultKeyedRateLimiter<K>>,
        key: &K,
    ) -> Result<(), Duration> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        let result = limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        if limiter.len() > MAX_TRACKED_KEYS {
            limiter.retain_recent();
        }
        result
    }
}

fn limiter<K: Hash + Eq + Clone>(quota: Quota) -> Option<DefaultKeyedRateLimiter<K>> {
    let per_second = NonZeroU32::new(quota.per_second)?;
    let burst = NonZeroU32::new(quota.burst).unwrap_or(per_second);
    Some(RateLimiter::keyed(
        GovernorQuota::per_second(per_second).allow_burst(burst),
    ))
}
