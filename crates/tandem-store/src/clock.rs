//! The one clock: a seam, so that timers, deadlines, retry backoff and the
//! desk's sweeps are tested by moving a clock rather than by sleeping.
//!
//! A [`Store`](crate::Store) is given its clock when it connects; it stamps
//! every row with it, and the workflow engine and the desk read the same
//! one ([`Store::clock`](crate::Store::clock)). What must hold in real time
//! stays on the wall clock instead: leases (other processes judge them by
//! their own clocks) and the expiry of credentials (tokens, sign-in
//! sessions, WebSocket tickets, hook timestamps).

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// The clock the store stamps rows with, and the engine and the desk read
/// `now` from and wait on.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves once `now()` has reached `at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'static, ()>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told to: tests advance it past a timer
/// and see it fire at once.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    moved: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
            moved: watch::Sender::new(start),
        }
    }

    /// Moves the clock forward, waking every sleeper now due.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = chrono::Duration::from_std(by)
            .ok()
            .and_then(|by| now.checked_add_signed(by))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.moved.send_replace(*now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            let _ = moved.wait_for(|now| *now >= at).await;
        })
    }
}
