-- Durable workflow runs, their journal and events; thread assignment
-- history; server secrets (SQLite).
-- Scheduling times (ready_at, lease_until, wake_at) are integer
-- microseconds since the Unix epoch, so they compare as numbers.

-- One run of a workflow. `ready_at` says when it should next be executed
-- (NULL: not until something happens, e.g. an event without a deadline);
-- `lease_owner`/`lease_until`/`generation` say which executor holds it: every
-- journal commit checks the generation, so a stale executor can never commit.
CREATE TABLE workflow_runs (
    id           BLOB PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    args         TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('running', 'waiting', 'paused', 'completed', 'failed', 'cancelled')),
    result       TEXT,
    error        TEXT,
    waiting_for  TEXT,
    ready_at     INTEGER,
    lease_owner  TEXT,
    lease_until  INTEGER,
    generation   INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    -- The on-complete handler has yet to run.
    finalize     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    finished_at  TEXT
) STRICT;

CREATE INDEX workflow_runs_ready ON workflow_runs (name, ready_at, id) WHERE ready_at IS NOT NULL;

-- The journal: one row per step, in the order the workflow took them.
CREATE TABLE workflow_steps (
    run_id      BLOB NOT NULL REFERENCES workflow_runs (id),
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'retrying', 'completed', 'failed')),
    output      TEXT,
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    wake_at     INTEGER,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    PRIMARY KEY (run_id, seq)
) STRICT;

-- Events delivered to a run; `consumed_seq` is the step that took it.
-- `delivery` deduplicates a redelivered hook or a reused resume URL.
CREATE TABLE workflow_events (
    id           BLOB PRIMARY KEY NOT NULL,
    run_id       BLOB NOT NULL REFERENCES workflow_runs (id),
    name         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('api', 'hook', 'resume_url')),
    delivery     TEXT,
    consumed_seq INTEGER,
    received_at  TEXT NOT NULL,
    UNIQUE (run_id, delivery)
) STRICT;

CREATE INDEX workflow_events_by_run ON workflow_events (run_id, name, id);

-- Declarative workflow definitions by content version, so a run keeps the
-- version it started on after its file changes.
CREATE TABLE workflow_definitions (
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
) STRICT;

-- Who a thread was assigned to, by whom, why, and when.
CREATE TABLE assignments (
    id          BLOB PRIMARY KEY NOT NULL,
    thread_id   BLOB NOT NULL REFERENCES threads (id),
    assigned_to TEXT NOT NULL CHECK (assigned_to IN ('ai', 'human', 'unassigned')),
    assignee    TEXT,
    team        TEXT,
    reason      TEXT,
    by_kind     TEXT NOT NULL,
    by_id       TEXT,
    created_at  TEXT NOT NULL
) STRICT;

CREATE INDEX assignments_by_thread ON assignments (thread_id, id);

-- Secrets the server generates for itself (e.g. the workflow signing key).
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
