-- Threads, messages, tool calls, tokens and idempotency records (PostgreSQL).

CREATE TABLE threads (
    id           UUID PRIMARY KEY,
    customer_id  TEXT NOT NULL,
    title        TEXT,
    status       TEXT NOT NULL CHECK (status IN ('open', 'waiting_on_human', 'closed')),
    assigned_to  TEXT NOT NULL CHECK (assigned_to IN ('ai', 'human', 'unassigned')),
    assignee     TEXT,
    metadata     JSONB NOT NULL DEFAULT '{}',
    last_seq     BIGINT NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

CREATE INDEX threads_by_customer ON threads (customer_id, id);
CREATE INDEX threads_by_status ON threads (status, id);
CREATE INDEX threads_by_assignment ON threads (assigned_to, id);

CREATE TABLE messages (
    id          UUID PRIMARY KEY,
    thread_id   UUID NOT NULL REFERENCES threads (id),
    seq         BIGINT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
    agent_name  TEXT,
    author_kind TEXT NOT NULL CHECK (author_kind IN ('customer', 'ai', 'human', 'system')),
    author_id   TEXT,
    content     JSONB NOT NULL,
    visibility  TEXT NOT NULL CHECK (visibility IN ('public', 'internal')),
    status      TEXT NOT NULL CHECK (status IN ('published', 'pending_approval', 'approved', 'rejected')),
    metadata    JSONB NOT NULL DEFAULT '{}',
    reply_to    UUID REFERENCES messages (id),
    created_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (thread_id, seq)
);

CREATE TABLE tool_calls (
    thread_id         UUID NOT NULL REFERENCES threads (id),
    tool_call_id      TEXT NOT NULL,
    name              TEXT NOT NULL,
    message_id        UUID NOT NULL REFERENCES messages (id),
    result_message_id UUID REFERENCES messages (id),
    PRIMARY KEY (thread_id, tool_call_id)
);

CREATE TABLE tokens (
    id          UUID PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('admin', 'agent', 'customer')),
    secret_hash TEXT NOT NULL UNIQUE,
    agent_name  TEXT,
    customer_id TEXT,
    label       TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);

CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    response_code INTEGER,
    response      JSONB,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE instance_facts (
    name       TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL
);

-- A message advances its thread: last_seq, activity time, and a customer's
-- message reopens a closed thread. Part of the insert's own statement.
CREATE FUNCTION messages_advance_thread() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE threads SET
        last_seq = NEW.seq,
        updated_at = NEW.created_at,
        status = CASE WHEN NEW.role = 'user' AND status = 'closed' THEN 'open' ELSE status END
    WHERE id = NEW.thread_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_advance_thread AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_advance_thread();
