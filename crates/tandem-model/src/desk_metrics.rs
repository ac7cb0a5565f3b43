//! Desk metrics: how fast humans respond to inbox items and resolve them,
//! what waits for them now, and which deadlines passed.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The desk's figures since a moment, overall and per agent.
///
/// Durations are over the items opened in the window (`created_at` at or
/// after `since`; at most the newest [`DeskMetrics::MAX_ITEMS`] of them),
/// so an item's first response never counts for more than its resolution.
/// `open` and `claimed` are counts of now, whatever the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeskMetrics {
    /// The start of the window.
    pub since: DateTime<Utc>,
    /// When the figures were read.
    pub at: DateTime<Utc>,
    /// Whether the window held more items than were read: the durations
    /// are then those of the newest [`DeskMetrics::MAX_ITEMS`].
    pub truncated: bool,
    pub overall: DeskFigures,
    /// Every agent that holds an item now, responded to, resolved or held
    /// an item whose deadline passed in the window; by name, at most
    /// [`DeskMetrics::MAX_AGENTS`] (the busiest).
    pub agents: Vec<AgentFigures>,
    /// Every deadline that ever passed, whatever the window: a count that
    /// only grows, for a monitoring counter.
    pub expiries_all_time: u64,
}

impl DeskMetrics {
    /// The most items of a window read.
    pub const MAX_ITEMS: u32 = 10_000;
    /// The most agents listed.
    pub const MAX_AGENTS: usize = 500;
}

/// The whole desk's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeskFigures {
    /// Items opened in the window (read).
    pub items: u64,
    /// Items waiting for a human now: `open` or `claimed`.
    pub open: u64,
    /// Items an agent holds now.
    pub claimed: u64,
    /// From an item's opening to the first human response (a reply in its
    /// thread, or its resolution), over the window's items that had one.
    pub first_response: DurationFigures,
    /// From an item's opening to its resolution, over the window's
    /// resolved items.
    pub resolution: DurationFigures,
    /// Items of the window resolved.
    pub resolved: u64,
    /// Items of the window whose deadline passed at least once.
    pub expired_items: u64,
    /// Deadlines that passed in the window (an item may count more than
    /// once).
    pub expiries: u64,
}

/// One agent's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentFigures {
    /// The agent's name (`admin` for admin tokens).
    pub agent: String,
    /// Items the agent holds now.
    pub claimed: u64,
    /// Items of the window the agent responded to first, and how fast.
    pub first_response: DurationFigures,
    /// Items of the window the agent resolved, and how long they took from
    /// their opening.
    pub resolution: DurationFigures,
    /// Items of the window the agent resolved.
    pub resolved: u64,
    /// Deadlines that passed in the window while the agent held the item.
    pub expiries: u64,
}

/// A distribution of durations, in seconds; no mean or percentiles when
/// there is nothing to measure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DurationFigures {
    pub count: u64,
    pub mean_seconds: Option<f64>,
    /// The median (nearest rank).
    pub p50_seconds: Option<f64>,
    /// The 90th percentile (nearest rank).
    pub p90_seconds: Option<f64>,
}

impl DurationFigures {
    /// The figures of `seconds` (any order).
    pub fn of(mut seconds: Vec<f64>) -> Self {
        if seconds.is_empty() {
            return Self::default();
        }
        seconds.sort_by(f64::total_cmp);
        let count = seconds.len();
        // Nearest rank: the smallest value at or above `p` of the values.
        let rank = |p: f64| {
            let rank = (p * count as f64).ceil() as usize;
            seconds[rank.clamp(1, count) - 1]
        };
        Self {
            count: count as u64,
            mean_seconds: Some(seconds.iter().sum::<f64>() / count as f64),
            p50_seconds: Some(rank(0.5)),
            p90_seconds: Some(rank(0.9)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DurationFigures;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(DurationFigures::of(vec![]), DurationFigures::default());
        let one = DurationFigures::of(vec![4.0]);
        assert_eq!(
            (
                one.count,
                one.mean_seconds,
                one.p50_seconds,
                one.p90_seconds
            ),
            (1, Some(4.0), Some(4.0), Some(4.0))
        );
        let ten = DurationFigures::of((1..=10).rev().map(f64::from).collect());
        assert_eq!(ten.count, 10);
        assert_eq!(ten.mean_seconds, Some(5.5));
        assert_eq!(ten.p50_seconds, Some(5.0));
        assert_eq!(ten.p90_seconds, Some(9.0));
    }
}
