//! Desk metrics: response and resolution times of inbox items, what waits
//! now, which deadlines passed.
//!
//! The same plain SQL on both backends: the rows are read, and durations
//! and percentiles computed here, as the two backends' date arithmetic and
//! percentile functions differ.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use tandem_model::{
    AgentFigures, DeskFigures, DeskMetrics, DurationFigures, InboxItemId, InboxStatus,
};
use uuid::Uuid;

use crate::backend::on_pool;
use crate::{Store, StoreError};

/// How much older than its row's `created_at` an item's id may be: ids are
/// UUID v7, taken just before the item is written (a queued SQLite write
/// may wait a little). Ids read the wall clock and rows the store's,
/// which are one outside tests.
const ID_SLACK: Duration = Duration::minutes(5);

/// What the durations of one item of the window are read from.
#[derive(sqlx::FromRow)]
struct WindowRow {
    status: InboxStatus,
    created_at: DateTime<Utc>,
    first_response_at: Option<DateTime<Utc>>,
    first_response_by: Option<String>,
    resolved_at: Option<DateTime<Utc>>,
    resolved_by: Option<String>,
    expiries: i32,
}

/// Durations, per agent, as they are gathered.
#[derive(Default)]
struct AgentTally {
    claimed: u64,
    first_response: Vec<f64>,
    resolution: Vec<f64>,
    expiries: u64,
}

impl AgentTally {
    /// How much the agent did: the busiest are kept when there are too many.
    fn activity(&self) -> u64 {
        self.claimed
            + self.first_response.len() as u64
            + self.resolution.len() as u64
            + self.expiries
    }
}

impl Store {
    /// The desk's figures for the items opened since `since` (at most the
    /// newest [`DeskMetrics::MAX_ITEMS`]), with the items open now and the
    /// deadlines that passed since `since`, overall and per agent.
    pub async fn desk_metrics(&self, since: DateTime<Utc>) -> Result<DeskMetrics, StoreError> {
        // The primary key bounds the scan: ids are UUID v7 and sort by the
        // time they were taken, and `created_at` has no index of its own.
        const WINDOW: &str = "SELECT status, created_at, first_response_at, first_response_by,
                    resolved_at, resolved_by, expiries
             FROM inbox_items WHERE id >= $1 AND created_at >= $2
             ORDER BY id DESC LIMIT $3";
        const PENDING: &str = "SELECT status, claimed_by, COUNT(*) FROM inbox_items
             WHERE status IN ('open', 'claimed') GROUP BY status, claimed_by";
        const EXPIRIES: &str = "SELECT holder, COUNT(*) FROM inbox_expiries
             WHERE created_at >= $1 GROUP BY holder";
        const ALL_EXPIRIES: &str = "SELECT COUNT(*) FROM inbox_expiries";

        let at = self.now();
        let lowest_id = InboxItemId(lowest_v7(
            since.checked_sub_signed(ID_SLACK).unwrap_or(since),
        ));
        // One more than the bound, to tell a truncated window.
        let rows: Vec<WindowRow> = on_pool!(self, p => sqlx::query_as(WINDOW)
            .bind(lowest_id)
            .bind(since)
            .bind(i64::from(DeskMetrics::MAX_ITEMS) + 1)
            .fetch_all(p)
            .await)?;
        let pending: Vec<(InboxStatus, Option<String>, i64)> =
            on_pool!(self, p => sqlx::query_as(PENDING).fetch_all(p).await)?;
        let expiries: Vec<(Option<String>, i64)> =
            on_pool!(self, p => sqlx::query_as(EXPIRIES).bind(since).fetch_all(p).await)?;
        let all_expiries: i64 =
            on_pool!(self, p => sqlx::query_scalar(ALL_EXPIRIES).fetch_one(p).await)?;

        let truncated = rows.len() > DeskMetrics::MAX_ITEMS as usize;
        let rows = &rows[..rows.len().min(DeskMetrics::MAX_ITEMS as usize)];
        let mut overall = DeskFigures {
            items: rows.len() as u64,
            ..DeskFigures::default()
        };
        let mut agents: BTreeMap<String, AgentTally> = BTreeMap::new();
        let (mut first_response, mut resolution) = (Vec::new(), Vec::new());
        for row in rows {
            if let Some(at) = row.first_response_at {
                let seconds = seconds_between(row.created_at, at);
                first_response.push(seconds);
                if let Some(agent) = &row.first_response_by {
                    let tally = agents.entry(agent.clone()).or_default();
                    tally.first_response.push(seconds);
                }
            }
            if row.status == InboxStatus::Resolved
                && let Some(at) = row.resolved_at
            {
                let seconds = seconds_between(row.created_at, at);
                resolution.push(seconds);
                if let Some(agent) = &row.resolved_by {
                    agents
                        .entry(agent.clone())
                        .or_default()
                        .resolution
                        .push(seconds);
                }
            }
            if row.expiries > 0 {
                overall.expired_items += 1;
            }
        }
        overall.resolved = resolution.len() as u64;
        overall.first_response = DurationFigures::of(first_response);
        overall.resolution = DurationFigures::of(resolution);
        for (status, holder, count) in pending {
            let count = count.max(0) as u64;
            overall.open += count;
            if status == InboxStatus::Claimed {
                overall.claimed += count;
                if let Some(holder) = holder {
                    agents.entry(holder).or_default().claimed += count;
                }
            }
        }
        for (holder, count) in expiries {
            let count = count.max(0) as u64;
            overall.expiries += count;
            if let Some(holder) = holder {
                agents.entry(holder).or_default().expiries += count;
            }
        }

        let mut agents: Vec<(String, AgentTally)> = agents.into_iter().collect();
        if agents.len() > DeskMetrics::MAX_AGENTS {
            // Stable: among equally busy agents, the first by name stay.
            agents.sort_by_key(|(_, tally)| std::cmp::Reverse(tally.activity()));
            agents.truncate(DeskMetrics::MAX_AGENTS);
            agents.sort_by(|(a, _), (b, _)| a.cmp(b));
        }
        let agents = agents
            .into_iter()
            .map(|(agent, tally)| AgentFigures {
                agent,
                claimed: tally.claimed,
                resolved: tally.resolution.len() as u64,
                first_response: DurationFigures::of(tally.first_response),
                resolution: DurationFigures::of(tally.resolution),
                expiries: tally.expiries,
            })
            .collect();
        Ok(DeskMetrics {
            since,
            at,
            truncated,
            overall,
            agents,
            expiries_all_time: all_expiries.max(0) as u64,
        })
    }
}

/// Seconds from `from` to `to`; never below zero (the clocks of two server
/// processes may disagree by a little).
fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let micros = (to - from).num_microseconds().unwrap_or(i64::MAX);
    micros.max(0) as f64 / 1e6
}

/// The lowest UUID v7 taken at `at` (or at the epoch, for earlier times):
/// every id taken then or later sorts at or above it, as bytes on both
/// backends.
fn lowest_v7(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    // 48 bits of milliseconds, then the version nibble; the rest zero.
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    use super::lowest_v7;

    #[test]
    fn lowest_v7_sorts_below_every_later_id() {
        let at: DateTime<Utc> = "2025-03-01T12:00:00Z".parse().unwrap();
        let lowest = lowest_v7(at);
        let same_ms = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            at.timestamp() as u64,
            0,
        ));
        let earlier = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            at.timestamp() as u64 - 1,
            999_000_000,
        ));
        assert!(lowest.as_bytes() <= same_ms.as_bytes());
        assert!(earlier.as_bytes() < lowest.as_bytes());
        assert_eq!(lowest.get_version_num(), 7);
        let before_epoch: DateTime<Utc> = "1960-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(lowest_v7(before_epoch).as_bytes()[..6], [0; 6]);
    }
}
