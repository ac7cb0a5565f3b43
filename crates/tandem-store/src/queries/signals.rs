//! Change signals between server processes (PostgreSQL only).
//!
//! Triggers (see `migrations/postgres/0002_…`) send a small JSON signal on
//! the `tandem_hub` channel at every commit that adds a message or changes a
//! thread or an inbox item; [`Store::send_signal`] sends ephemeral ones
//! (typing, presence). A signal names what changed, never its contents: the
//! receiver re-reads the rows. On SQLite there is one server process and no
//! signal.

use sqlx::postgres::PgListener;

use crate::backend::Pool;
use crate::{Store, StoreError};

/// The channel every signal travels on.
pub const SIGNAL_CHANNEL: &str = "tandem_hub";

/// A connection listening for signals.
pub struct SignalListener {
    listener: PgListener,
}

impl SignalListener {
    /// The next signal's payload; `None` when the connection was lost, after
    /// which signals may have been missed and this listener must be dropped
    /// for a new one.
    pub async fn recv(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self
            .listener
            .try_recv()
            .await?
            .map(|n| n.payload().to_owned()))
    }
}

impl Store {
    /// A new listener on the signal channel, or `None` on SQLite. Once this
    /// returns, every later commit's signal reaches the listener.
    pub async fn listen_signals(&self) -> Result<Option<SignalListener>, StoreError> {
        let Pool::Postgres(pool) = self.pool() else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.ignore_pool_close_event(true);
        listener.listen(SIGNAL_CHANNEL).await?;
        Ok(Some(SignalListener { listener }))
    }

    /// Sends an ephemeral signal to every process (nothing on SQLite).
    pub async fn send_signal(&self, payload: &str) -> Result<(), StoreError> {
        if let Pool::Postgres(pool) = self.pool() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(SIGNAL_CHANNEL)
                .bind(payload)
                .execute(pool)
                .await?;
        }
        Ok(())
    }
}
