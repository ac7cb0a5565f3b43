-- Durable workflow runs, their journal and events; thread assignment
-- history; server secrets (PostgreSQL).
-- Scheduling times (ready_at, lease_until, wake_at) are integer
-- microseconds since the Unix epoch, the same on both backends.

-- One run of a workflow. `ready_at` says when it should next be executed
-- (NULL: not until something happens, e.g. an event without a deadline);
-- `lease_owner`/`lease_until`/`generation` say which executor holds it: every
-- journal commit checks the generation, so a stale executor can never commit.
CREATE TABLE workflow_runs (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    args         JSONB NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('running', 'waiting', 'paused', 'completed', 'failed', 'cancelled')),
    result       JSONB,
    error        JSONB,
    waiting_for  TEXT,
    ready_at     BIGINT,
    lease_owner  TEXT,
    lease_until  BIGINT,
    generation   BIGINT NOT NULL DEFAULT 0,
    attempts     BIGINT NOT NULL DEFAULT 0,
    -- The on-complete handler has yet to run.
    finalize     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ
);

CREATE INDEX workflow_runs_ready ON workflow_runs (name, ready_at, id) WHERE ready_at IS NOT NULL;

-- The journal: one row per step, in the order the workflow took them.
CREATE TABLE workflow_steps (
    run_id      UUID NOT NULL REFERENCES workflow_runs (id),
    seq         BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'retrying', 'completed', 'failed')),
    output      JSONB,
    error       JSONB,
    attempts    BIGINT NOT NULL DEFAULT 0,
    wake_at     BIGINT,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (run_id, seq)
);

-- Events delivered to a run; `consumed_seq` is the step that took it.
-- `delivery` deduplicates a redelivered hook or a reused resume URL.
CREATE TABLE workflow_events (
    id           UUID PRIMARY KEY,
    run_id       UUID NOT NULL REFERENCES workflow_runs (id),
    name         TEXT NOT NULL,
    payload      JSONB NOT NULL,
    source       TEXT NOT NULL CHECK (source IN ('api', 'hook', 'resume_url')),
    delivery     TEXT,
    consumed_seq BIGINT,
    received_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (run_id, delivery)
);

CREATE INDEX workflow_events_by_run ON workflow_events (run_id, name, id);

-- Declarative workflow definitions by content version, so a run keeps the
-- version it started on after its file changes.
CREATE TABLE workflow_definitions (
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, version)
);

-- Who a thread was assigned to, by whom, why, and when.
CREATE TABLE assignments (
    id          UUID PRIMARY KEY,
    thread_id   UUID NOT NULL REFERENCES threads (id),
    assigned_to TEXT NOT NULL CHECK (assigned_to IN ('ai', 'human', 'unassigned')),
    assignee    TEXT,
    team        TEXT,
    reason      TEXT,
    by_kind     TEXT NOT NULL,
    by_id       TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX assignments_by_thread ON assignments (thread_id, id);

-- Secrets the server generates for itself (e.g. the workflow signing key).
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- A run's status changed, or it became ready: other processes push the
-- change to their `workflow:<id>` subscribers and wake their dispatchers.
CREATE TRIGGER workflow_runs_hub_signal_insert AFTER INSERT ON workflow_runs
    FOR EACH ROW EXECUTE FUNCTION hub_signal_row('workflow');

CREATE TRIGGER workflow_runs_hub_signal AFTER UPDATE ON workflow_runs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.ready_at IS DISTINCT FROM NEW.ready_at)
    EXECUTE FUNCTION hub_signal_row('workflow');
