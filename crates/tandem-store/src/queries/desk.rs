//! The desk: agents' presence, teams and capacity; fair assignment of
//! waiting items; and what happens when an item's deadline passes.
//!
//! Assignment is one transaction that reads who is online and how loaded,
//! then gives the oldest waiting items out one by one, each with a guarded
//! update (an item an agent claimed meanwhile is skipped). On PostgreSQL
//! the transaction first takes an advisory lock, so processes assigning at
//! the same moment take turns and never both fill one agent's last slot.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tandem_model::{
    AgentSettings, AssignedTo, AssignmentMode, DeskAgent, EffectOutput, EventSource, ExpireItem,
    Expiry, ExpiryAction, ExpiryOutcome, ExpiryRecord, InboxItem, InboxKind, InboxStatus,
    NewAssignment, Presence, PresenceChange, RunStatus,
};

use super::inbox::{inbox_columns, lock_item, publish_draft_in};
use super::messages::insert_message;
use super::workflows::{NewEvent, assign_in, create_run_in, deliver_in, lock_run};
use crate::backend::{Conn, Tx, job, on_conn, on_pool};
use crate::changes::Change;
use crate::{Store, StoreError};

/// The advisory lock assignment passes take on PostgreSQL.
const ASSIGNMENT_LOCK: i64 = 0x0074_616e_6465_6d01;

/// Most waiting items one assignment pass looks at.
const PASS_ITEMS: i64 = 500;

/// Most teams an agent is in, and the longest team name.
pub const MAX_TEAMS: usize = 50;
pub const MAX_TEAM_CHARS: usize = 100;

#[derive(sqlx::FromRow)]
struct AgentRow {
    name: String,
    capacity: i32,
    presence: Presence,
    presence_at: DateTime<Utc>,
    last_assigned_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

/// Agents, by name; with `$1`, only those online since then.
const AGENTS: &str = "SELECT name, capacity, presence, presence_at, last_assigned_at, updated_at
     FROM desk_agents
     WHERE $1 IS NULL OR (presence = 'online' AND presence_at >= $1)
     ORDER BY name";

/// Every agent's teams.
const TEAMS: &str = "SELECT agent, team FROM desk_agent_teams ORDER BY agent, team";

/// How many items each agent holds.
const LOADS: &str = "SELECT claimed_by, COUNT(*) FROM inbox_items
     WHERE status = 'claimed' AND claimed_by IS NOT NULL GROUP BY claimed_by";

impl Store {
    /// Every agent the desk knows, by name, with its teams and load.
    pub async fn desk_agents(&self) -> Result<Vec<DeskAgent>, StoreError> {
        let none: Option<DateTime<Utc>> = None;
        let rows = on_pool!(self, p => sqlx::query_as::<_, AgentRow>(AGENTS)
            .bind(none)
            .fetch_all(p)
            .await)?;
        let teams = on_pool!(self, p => sqlx::query_as::<_, (String, String)>(TEAMS)
            .fetch_all(p)
            .await)?;
        let loads = on_pool!(self, p => sqlx::query_as::<_, (String, i64)>(LOADS)
            .fetch_all(p)
            .await)?;
        Ok(assemble(rows, teams, loads.into_iter().collect()))
    }

    /// One agent, if the desk knows it.
    pub async fn desk_agent(&self, name: &str) -> Result<Option<DeskAgent>, StoreError> {
        Ok(self
            .desk_agents()
            .await?
            .into_iter()
            .find(|a| a.name == name))
    }

    /// Changes an agent's capacity or teams, adding the agent (offline, with
    /// `default_capacity`) if the desk did not know it.
    pub async fn configure_agent(
        &self,
        name: &str,
        settings: AgentSettings,
        default_capacity: u32,
    ) -> Result<DeskAgent, StoreError> {
        let name = name.to_owned();
        self.write(job(move |mut tx| {
            let (name, settings) = (name.clone(), settings.clone());
            Box::pin(async move {
                let now = tx.now();
                let tx = &mut tx;
                ensure_agent(tx, &name, default_capacity, now).await?;
                if let Some(capacity) = settings.capacity {
                    on_conn!(tx, c => sqlx::query(
                        "UPDATE desk_agents SET capacity = $2, updated_at = $3 WHERE name = $1",
                    )
                    .bind(&name)
                    .bind(i64::from(capacity))
                    .bind(now)
                    .execute(c)
                    .await
        .map(|r| r.rows_affected()))?;
                }
                if let Some(teams) = &settings.teams {
                    on_conn!(tx, c => sqlx::query("DELETE FROM desk_agent_teams WHERE agent = $1")
                        .bind(&name)
                        .execute(c)
                        .await
        .map(|r| r.rows_affected()))?;
                    for team in teams.iter().collect::<HashSet<_>>() {
                        on_conn!(tx, c => sqlx::query(
                            "INSERT INTO desk_agent_teams (agent, team) VALUES ($1, $2)",
                        )
                        .bind(&name)
                        .bind(team)
                        .execute(c)
                        .await
        .map(|r| r.rows_affected()))?;
                    }
                }
                announce_agent(tx, &name).await
            })
        }))
        .await
    }

    /// Sets (or refreshes) an agent's presence. Going offline gives the
    /// items it holds back to the queue, in the same transaction.
    pub async fn set_presence(
        &self,
        name: &str,
        presence: Presence,
        default_capacity: u32,
    ) -> Result<PresenceChange, StoreError> {
        let name = name.to_owned();
        self.write(job(move |mut tx| {
            let name = name.clone();
            Box::pin(async move {
                let now = tx.now();
                let tx = &mut tx;
                ensure_agent(tx, &name, default_capacity, now).await?;
                on_conn!(tx, c => sqlx::query(
                    "UPDATE desk_agents SET presence = $2, presence_at = $3, updated_at = $3
                     WHERE name = $1",
                )
                .bind(&name)
                .bind(presence)
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                let released = if presence == Presence::Offline {
                    release_held_by(tx, &name, now).await?
                } else {
                    Vec::new()
                };
                let agent = announce_agent(tx, &name).await?;
                Ok(PresenceChange { agent, released })
            })
        }))
        .await
    }

    /// Marks offline every agent `online` or `away` whose presence was not
    /// refreshed since `stale_before`, giving its items back to the queue.
    pub async fn expire_presence(
        &self,
        stale_before: DateTime<Utc>,
    ) -> Result<Vec<PresenceChange>, StoreError> {
        self.write(job(move |mut tx| {
            Box::pin(async move {
                let now = tx.now();
                let tx = &mut tx;
                let names: Vec<String> = on_conn!(tx, c => sqlx::query_scalar(
                    "UPDATE desk_agents SET presence = 'offline', updated_at = $2
                     WHERE presence <> 'offline' AND presence_at < $1 RETURNING name",
                )
                .bind(stale_before)
                .bind(now)
                .fetch_all(c)
                .await)?;
                let mut gone = Vec::with_capacity(names.len());
                for name in names {
                    let released = release_held_by(tx, &name, now).await?;
                    let agent = announce_agent(tx, &name).await?;
                    gone.push(PresenceChange { agent, released });
                }
                Ok(gone)
            })
        }))
        .await
    }

    /// Gives waiting items, oldest first, to online agents with room, as
    /// `mode` picks them (nothing for [`AssignmentMode::Manual`]). Agents
    /// whose presence is older than `presence_since` count as offline.
    /// Returns the items assigned (now `claimed` by their agent).
    pub async fn assign_waiting(
        &self,
        mode: AssignmentMode,
        presence_since: DateTime<Utc>,
    ) -> Result<Vec<InboxItem>, StoreError> {
        if mode == AssignmentMode::Manual {
            return Ok(Vec::new());
        }
        self.write(job(move |mut tx| {
            Box::pin(async move {
                let tx = &mut tx;
                lock_assignment(tx).await?;
                let mut desk = Desk::load(tx, presence_since).await?;
                if desk.agents.iter().all(|a| a.load >= a.capacity) {
                    return Ok(Vec::new());
                }
                let waiting: Vec<(tandem_model::InboxItemId, Option<String>)> =
                    on_conn!(tx, c => sqlx::query_as(
                        "SELECT id, team FROM inbox_items WHERE status = 'open'
                         ORDER BY created_at, id LIMIT $1",
                    )
                    .bind(PASS_ITEMS)
                    .fetch_all(c)
                    .await)?;
                let now = tx.now();
                let mut assigned = Vec::new();
                for (id, team) in waiting {
                    let Some(pick) = desk.pick(team.as_deref(), None, mode) else {
                        continue;
                    };
                    let at = desk.tick(now);
                    if let Some(item) = claim_for(tx, id, &desk.agents[pick].name, at).await? {
                        desk.took(pick, at);
                        mark_assigned(tx, &desk.agents[pick].name, at).await?;
                        assigned.push(item);
                    }
                    if desk.agents.iter().all(|a| a.load >= a.capacity) {
                        break;
                    }
                }
                Ok(assigned)
            })
        }))
        .await
    }

    /// The expiries recorded for an item, oldest first.
    pub async fn item_expiries(
        &self,
        item_id: tandem_model::InboxItemId,
    ) -> Result<Vec<ExpiryRecord>, StoreError> {
        type Row = (
            DateTime<Utc>,
            String,
            Option<String>,
            sqlx::types::Json<ExpiryOutcome>,
            DateTime<Utc>,
        );
        let rows: Vec<Row> = on_pool!(self, p => sqlx::query_as(
            "SELECT due_at, fallback, holder, outcome, created_at FROM inbox_expiries
             WHERE item_id = $1 ORDER BY created_at, id",
        )
        .bind(item_id)
        .fetch_all(p)
        .await)?;
        Ok(rows
            .into_iter()
            .map(
                |(due_at, fallback, holder, outcome, created_at)| ExpiryRecord {
                    due_at,
                    fallback,
                    holder,
                    outcome: outcome.0,
                    created_at,
                },
            )
            .collect())
    }
}

/// Adds an agent the desk does not know yet: offline, with the default
/// capacity.
async fn ensure_agent(
    tx: &mut Tx<'_>,
    name: &str,
    capacity: u32,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    on_conn!(tx, c => sqlx::query(
        "INSERT INTO desk_agents (name, capacity, presence, presence_at, updated_at)
         VALUES ($1, $2, 'offline', $3, $3) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(i64::from(capacity))
    .bind(now)
    .execute(c)
    .await
        .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Gives the items `agent` holds back to the queue.
async fn release_held_by(
    tx: &mut Tx<'_>,
    agent: &str,
    now: DateTime<Utc>,
) -> Result<Vec<InboxItem>, StoreError> {
    const SQL: &str = concat!(
        "UPDATE inbox_items SET status = 'open', claimed_by = NULL, claimed_at = NULL,
             last_activity_at = NULL, updated_at = $2
         WHERE status = 'claimed' AND claimed_by = $1
         RETURNING ",
        inbox_columns!()
    );
    let items = on_conn!(tx, c => sqlx::query_as::<_, InboxItem>(SQL)
        .bind(agent)
        .bind(now)
        .fetch_all(c)
        .await)?;
    tx.emit_all(items.iter().map(Change::item));
    Ok(items)
}

/// An agent as this transaction leaves it, announced as changed.
async fn announce_agent(tx: &mut Tx<'_>, name: &str) -> Result<DeskAgent, StoreError> {
    const AGENT: &str = "SELECT name, capacity, presence, presence_at, last_assigned_at, updated_at
         FROM desk_agents WHERE name = $1";
    let row = on_conn!(tx, c => sqlx::query_as::<_, AgentRow>(AGENT)
        .bind(name)
        .fetch_optional(c)
        .await)?
    .ok_or(StoreError::NotFound("agent"))?;
    let teams = on_conn!(tx, c => sqlx::query_as::<_, (String, String)>(
        "SELECT agent, team FROM desk_agent_teams WHERE agent = $1 ORDER BY team",
    )
    .bind(name)
    .fetch_all(c)
    .await)?;
    let load: i64 = on_conn!(tx, c => sqlx::query_scalar(
        "SELECT COUNT(*) FROM inbox_items WHERE status = 'claimed' AND claimed_by = $1",
    )
    .bind(name)
    .fetch_one(c)
    .await)?;
    let loads = HashMap::from([(name.to_owned(), load)]);
    let agent = assemble(vec![row], teams, loads)
        .pop()
        .ok_or(StoreError::NotFound("agent"))?;
    tx.emit(Change::Agent(std::sync::Arc::new(agent.clone())));
    Ok(agent)
}

/// Claims a still-open item for `agent`; none if it is not open any more.
async fn claim_for(
    tx: &mut Tx<'_>,
    id: tandem_model::InboxItemId,
    agent: &str,
    now: DateTime<Utc>,
) -> Result<Option<InboxItem>, StoreError> {
    const SQL: &str = concat!(
        "UPDATE inbox_items SET status = 'claimed', claimed_by = $2, claimed_at = $3,
             last_activity_at = $3, updated_at = $3
         WHERE id = $1 AND status = 'open'
         RETURNING ",
        inbox_columns!()
    );
    let item = on_conn!(tx, c => sqlx::query_as::<_, InboxItem>(SQL)
        .bind(id)
        .bind(agent)
        .bind(now)
        .fetch_optional(c)
        .await)?;
    tx.emit_all(item.iter().map(Change::item));
    Ok(item)
}

async fn mark_assigned(tx: &mut Tx<'_>, agent: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
    on_conn!(tx, c => sqlx::query("UPDATE desk_agents SET last_assigned_at = $2 WHERE name = $1")
        .bind(agent)
        .bind(at)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Makes assignment passes of several processes take turns (PostgreSQL;
/// SQLite has one writer already).
async fn lock_assignment(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    if let Conn::Postgres(c) = &mut tx.conn {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ASSIGNMENT_LOCK)
            .execute(&mut **c)
            .await?;
    }
    Ok(())
}

fn assemble(
    rows: Vec<AgentRow>,
    teams: Vec<(String, String)>,
    loads: HashMap<String, i64>,
) -> Vec<DeskAgent> {
    let mut by_agent: HashMap<String, Vec<String>> = HashMap::new();
    for (agent, team) in teams {
        by_agent.entry(agent).or_default().push(team);
    }
    rows.into_iter()
        .map(|row| DeskAgent {
            teams: by_agent.remove(&row.name).unwrap_or_default(),
            load: loads.get(&row.name).copied().unwrap_or(0),
            name: row.name,
            capacity: row.capacity,
            presence: row.presence,
            presence_at: row.presence_at,
            last_assigned_at: row.last_assigned_at,
            updated_at: row.updated_at,
        })
        .collect()
}

/// The online agents as one assignment pass sees them.
struct Desk {
    agents: Vec<Candidate>,
    /// Assignments made so far in this pass: each gets its own instant, so
    /// that round-robin's order holds across passes.
    ticks: i64,
}

struct Candidate {
    name: String,
    capacity: i64,
    load: i64,
    last_assigned_at: Option<DateTime<Utc>>,
    teams: HashSet<String>,
}

impl Desk {
    async fn load(tx: &mut Tx<'_>, presence_since: DateTime<Utc>) -> Result<Self, StoreError> {
        let rows = on_conn!(tx, c => sqlx::query_as::<_, AgentRow>(AGENTS)
            .bind(Some(presence_since))
            .fetch_all(c)
            .await)?;
        let teams = on_conn!(tx, c => sqlx::query_as::<_, (String, String)>(TEAMS)
            .fetch_all(c)
            .await)?;
        let loads: HashMap<String, i64> =
            on_conn!(tx, c => sqlx::query_as::<_, (String, i64)>(LOADS)
            .fetch_all(c)
            .await)?
            .into_iter()
            .collect();
        let agents = assemble(rows, teams, loads)
            .into_iter()
            .map(|a| Candidate {
                capacity: i64::from(a.capacity),
                load: a.load,
                last_assigned_at: a.last_assigned_at,
                teams: a.teams.into_iter().collect(),
                name: a.name,
            })
            .collect();
        Ok(Self { agents, ticks: 0 })
    }

    /// The agent an item goes to: online, in the item's team (any agent
    /// for an item without one), below capacity, not `exclude`; then by
    /// `mode`. Ties go to the agent longest without an item, then by name.
    fn pick(
        &self,
        team: Option<&str>,
        exclude: Option<&str>,
        mode: AssignmentMode,
    ) -> Option<usize> {
        let eligible = self.agents.iter().enumerate().filter(|(_, a)| {
            a.load < a.capacity
                && team.is_none_or(|t| a.teams.contains(t))
                && exclude.is_none_or(|e| a.name != e)
        });
        let key = |a: &Candidate| (a.last_assigned_at, a.name.clone());
        match mode {
            AssignmentMode::Manual => None,
            AssignmentMode::RoundRobin => eligible.min_by_key(|(_, a)| key(a)).map(|(i, _)| i),
            AssignmentMode::LeastLoaded => eligible
                .min_by_key(|(_, a)| (a.load, key(a)))
                .map(|(i, _)| i),
        }
    }

    fn tick(&mut self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.ticks += 1;
        now + chrono::Duration::microseconds(self.ticks)
    }

    fn took(&mut self, index: usize, at: DateTime<Utc>) {
        let agent = &mut self.agents[index];
        agent.load += 1;
        agent.last_assigned_at = Some(at);
    }
}

/// Passes an item's deadline (the [`tandem_model::StoreEffect::ExpireItem`]
/// effect): records the expiry once per item and deadline, and applies the
/// fallback, in the journal's transaction.
pub(crate) async fn expire_item_in(
    tx: &mut Tx<'_>,
    expire: ExpireItem,
) -> Result<EffectOutput, StoreError> {
    let item = lock_item(tx, expire.item_id)
        .await?
        .ok_or(StoreError::NotFound("inbox item"))?;
    let quiet = |outcome| {
        EffectOutput::Expired(Expiry {
            item: None,
            outcome,
        })
    };
    if !matches!(item.status, InboxStatus::Open | InboxStatus::Claimed) {
        return Ok(quiet(ExpiryOutcome::Closed));
    }
    if item.due_at != Some(expire.due_at) {
        return Ok(quiet(ExpiryOutcome::Moved {
            due_at: item.due_at,
        }));
    }
    let now = tx.now();
    if reply_cancelled(tx, &item).await? {
        // Its reply was cancelled: nobody waits for it, and no fallback
        // may publish it.
        let item = close_item(tx, &item, now).await?;
        return Ok(EffectOutput::Expired(Expiry {
            item: Some(item),
            outcome: ExpiryOutcome::Closed,
        }));
    }
    let fallback = match expire.action {
        ExpiryAction::Reassign {
            due_in,
            presence_since,
            mode,
        } => reassign(tx, &item, due_in, presence_since, mode, now).await?,
        ExpiryAction::Hold { message } => hold(tx, &item, message).await?,
        ExpiryAction::AiAnswer {
            note,
            answer,
            follow_up,
            now: now_us,
        } => ai_answer(tx, &item, note, answer, follow_up, now_us).await?,
    };
    record_expiry(tx, &item, expire.due_at, &fallback.outcome, now).await?;
    let item = apply_fallback(tx, &item, &fallback, now).await?;
    Ok(EffectOutput::Expired(Expiry {
        item: Some(item),
        outcome: fallback.outcome,
    }))
}

/// What a fallback makes of an item past its deadline.
struct Fallback {
    status: InboxStatus,
    claimed_by: Option<String>,
    due_at: Option<DateTime<Utc>>,
    outcome: ExpiryOutcome,
}

/// Whether `item` is a question or a draft of a reply run that was
/// cancelled.
async fn reply_cancelled(tx: &mut Tx<'_>, item: &InboxItem) -> Result<bool, StoreError> {
    if !matches!(item.kind, InboxKind::Question | InboxKind::Approval) {
        return Ok(false);
    }
    let Some(run_id) = item.run_id else {
        return Ok(false);
    };
    Ok(lock_run(tx, run_id).await?.status == RunStatus::Cancelled)
}

/// Closes an item (`expired`) without a fallback.
async fn close_item(
    tx: &mut Tx<'_>,
    item: &InboxItem,
    now: DateTime<Utc>,
) -> Result<InboxItem, StoreError> {
    const CLOSE: &str = concat!(
        "UPDATE inbox_items SET status = 'expired', updated_at = $2 WHERE id = $1 RETURNING ",
        inbox_columns!()
    );
    let item = on_conn!(tx, c => sqlx::query_as::<_, InboxItem>(CLOSE)
        .bind(item.id)
        .bind(now)
        .fetch_one(c)
        .await)?;
    tx.emit(Change::item(&item));
    Ok(item)
}

/// The `reassign` fallback: another online agent of the item's team with
/// room (not the holder), or the queue; a new deadline `due_in` from now.
async fn reassign(
    tx: &mut Tx<'_>,
    item: &InboxItem,
    due_in: Option<std::time::Duration>,
    presence_since: DateTime<Utc>,
    mode: AssignmentMode,
    now: DateTime<Utc>,
) -> Result<Fallback, StoreError> {
    let holder = item.claimed_by.clone();
    lock_assignment(tx).await?;
    let mut desk = Desk::load(tx, presence_since).await?;
    // The holder's own item no longer counts against it.
    if let Some(i) = desk
        .agents
        .iter()
        .position(|a| Some(&a.name) == holder.as_ref())
    {
        desk.agents[i].load -= 1;
    }
    let mode = if mode == AssignmentMode::Manual {
        AssignmentMode::LeastLoaded
    } else {
        mode
    };
    let to = desk
        .pick(item.team.as_deref(), holder.as_deref(), mode)
        .map(|i| desk.agents[i].name.clone());
    if let Some(agent) = &to {
        mark_assigned(tx, agent, now).await?;
    }
    let due_at = due_in
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .and_then(|d| now.checked_add_signed(d));
    Ok(Fallback {
        status: if to.is_some() {
            InboxStatus::Claimed
        } else {
            InboxStatus::Open
        },
        claimed_by: to.clone(),
        due_at,
        outcome: ExpiryOutcome::Reassigned {
            from: holder,
            to,
            due_at,
        },
    })
}

/// The `hold` fallback: the customer is told a person will answer; the
/// item stays as it is.
async fn hold(
    tx: &mut Tx<'_>,
    item: &InboxItem,
    message: tandem_model::NewMessage,
) -> Result<Fallback, StoreError> {
    let posted = insert_message(tx, message).await?;
    Ok(Fallback {
        status: item.status,
        claimed_by: item.claimed_by.clone(),
        due_at: item.due_at,
        outcome: ExpiryOutcome::Held {
            message_id: posted.id,
        },
    })
}

/// The `ai_answer` fallback: a note for the team, then the AI goes on. A
/// question gets `answer` as its tool result and an approval's draft is
/// published as written, and their run is told; a handoff or an escalation
/// goes back to the AI, with `follow_up` (a new reply run) started.
async fn ai_answer(
    tx: &mut Tx<'_>,
    item: &InboxItem,
    note: tandem_model::NewMessage,
    answer: Option<tandem_model::NewMessage>,
    follow_up: Option<tandem_model::NewRun>,
    now_us: i64,
) -> Result<Fallback, StoreError> {
    let note_id = insert_message(tx, note).await?.id;
    let mut message_id = None;
    let mut run_id = None;
    match item.kind {
        InboxKind::Question | InboxKind::Approval => {
            if item.kind == InboxKind::Question {
                if let Some(answer) = answer {
                    insert_message(tx, answer).await?;
                }
            } else {
                let approval =
                    json!({"approved_by": Value::Null, "edited": false, "deadline_passed": true});
                let (_, reply) = publish_draft_in(tx, item, None, approval).await?;
                message_id = Some(reply.id);
            }
            tell_run_expired(tx, item, message_id, now_us).await?;
        }
        InboxKind::Handoff | InboxKind::Escalation => {
            let back_to_ai = NewAssignment {
                thread_id: item.thread_id,
                assigned_to: AssignedTo::Ai,
                assignee: None,
                team: None,
                reason: Some("no human answered before the deadline; the AI answers".into()),
                by_kind: "system".into(),
                by_id: Some("desk".into()),
            };
            assign_in(tx, back_to_ai).await?;
            if let Some(run) = follow_up {
                run_id = Some(create_run_in(tx, &run, now_us).await?.id);
            }
        }
    }
    Ok(Fallback {
        status: InboxStatus::Expired,
        claimed_by: item.claimed_by.clone(),
        due_at: item.due_at,
        outcome: ExpiryOutcome::AiAnswered {
            note_id,
            message_id,
            run_id,
        },
    })
}

/// Sends the run waiting on `item` (one that has not finished) the event
/// that its item expired.
async fn tell_run_expired(
    tx: &mut Tx<'_>,
    item: &InboxItem,
    message_id: Option<tandem_model::MessageId>,
    now_us: i64,
) -> Result<(), StoreError> {
    let Some(run_id) = item.run_id else {
        return Ok(());
    };
    let run = lock_run(tx, run_id).await?;
    if run.status.is_finished() {
        return Ok(());
    }
    let name = format!("inbox:{}", item.id);
    let event = NewEvent {
        run_id,
        payload: json!({
            "resolution": "expired",
            "by": Value::Null,
            "text": Value::Null,
            "message_id": message_id,
        }),
        source: EventSource::Api,
        delivery: Some(name.clone()),
        name,
    };
    deliver_in(tx, run, event, now_us, None).await?;
    Ok(())
}

/// Records that the deadline `due_at` of `item` passed, once: a second
/// record of the same deadline is refused.
async fn record_expiry(
    tx: &mut Tx<'_>,
    item: &InboxItem,
    due_at: DateTime<Utc>,
    outcome: &ExpiryOutcome,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let fallback = match outcome {
        ExpiryOutcome::Reassigned { .. } => "reassign",
        ExpiryOutcome::Held { .. } => "hold",
        _ => "ai_answer",
    };
    let recorded = on_conn!(tx, c => sqlx::query(
        "INSERT INTO inbox_expiries (id, item_id, due_at, fallback, holder, outcome, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (item_id, due_at) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(item.id)
    .bind(due_at)
    .bind(fallback)
    .bind(&item.claimed_by)
    .bind(sqlx::types::Json(outcome))
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if recorded == 0 {
        // Recorded already: the journal commit that made this effect is
        // being made again, which the lease forbids; refuse rather than
        // apply a fallback twice.
        return Err(StoreError::conflict(
            "expiry_recorded",
            format!("the deadline of inbox item {} already passed", item.id),
        ));
    }
    Ok(())
}

/// Leaves the item as the fallback says, counting the expiry.
async fn apply_fallback(
    tx: &mut Tx<'_>,
    item: &InboxItem,
    fallback: &Fallback,
    now: DateTime<Utc>,
) -> Result<InboxItem, StoreError> {
    const UPDATE: &str = concat!(
        "UPDATE inbox_items SET status = $2, claimed_by = $3,
             claimed_at = CASE WHEN $3 IS NULL THEN NULL WHEN $3 = claimed_by THEN claimed_at ELSE $5 END,
             last_activity_at = CASE WHEN $3 IS NULL THEN NULL WHEN $3 = claimed_by THEN last_activity_at ELSE $5 END,
             due_at = $4, expiries = expiries + 1, last_expired_at = $5, updated_at = $5
         WHERE id = $1 RETURNING ",
        inbox_columns!()
    );
    let item = on_conn!(tx, c => sqlx::query_as::<_, InboxItem>(UPDATE)
        .bind(item.id)
        .bind(fallback.status)
        .bind(&fallback.claimed_by)
        .bind(fallback.due_at)
        .bind(now)
        .fetch_one(c)
        .await)?;
    tx.emit(Change::item(&item));
    Ok(item)
}
