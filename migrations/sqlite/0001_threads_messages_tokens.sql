-- Threads, messages, tool calls, tokens and idempotency records (SQLite).
-- Ids are UUID v7 stored as 16-byte BLOBs, so they sort by creation time;
-- timestamps are RFC 3339 text in UTC; JSON columns hold text.

CREATE TABLE threads (
    id           BLOB PRIMARY KEY NOT NULL,
    customer_id  TEXT NOT NULL,
    title        TEXT,
    status       TEXT NOT NULL CHECK (status IN ('open', 'waiting_on_human', 'closed')),
    assigned_to  TEXT NOT NULL CHECK (assigned_to IN ('ai', 'human', 'unassigned')),
    assignee     TEXT,
    metadata     TEXT NOT NULL DEFAULT '{}',
    last_seq     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
) STRICT;

CREATE INDEX threads_by_customer ON threads (customer_id, id);
CREATE INDEX threads_by_status ON threads (status, id);
CREATE INDEX threads_by_assignment ON threads (assigned_to, id);

CREATE TABLE messages (
    id          BLOB PRIMARY KEY NOT NULL,
    thread_id   BLOB NOT NULL REFERENCES threads (id),
    seq         INTEGER NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
    agent_name  TEXT,
    author_kind TEXT NOT NULL CHECK (author_kind IN ('customer', 'ai', 'human', 'system')),
    author_id   TEXT,
    content     TEXT NOT NULL,
    visibility  TEXT NOT NULL CHECK (visibility IN ('public', 'internal')),
    status      TEXT NOT NULL CHECK (status IN ('published', 'pending_approval', 'approved', 'rejected')),
    metadata    TEXT NOT NULL DEFAULT '{}',
    reply_to    BLOB REFERENCES messages (id),
    created_at  TEXT NOT NULL,
    UNIQUE (thread_id, seq)
) STRICT;

-- Every tool call an assistant message makes, and the message that answered it.
CREATE TABLE tool_calls (
    thread_id         BLOB NOT NULL REFERENCES threads (id),
    tool_call_id      TEXT NOT NULL,
    name              TEXT NOT NULL,
    message_id        BLOB NOT NULL REFERENCES messages (id),
    result_message_id BLOB REFERENCES messages (id),
    PRIMARY KEY (thread_id, tool_call_id)
) STRICT;

CREATE TABLE tokens (
    id          BLOB PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('admin', 'agent', 'customer')),
    secret_hash TEXT NOT NULL UNIQUE,
    agent_name  TEXT,
    customer_id TEXT,
    label       TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
) STRICT;

-- The first answer to a POST that carried an Idempotency-Key, per caller and route.
CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    response_code INTEGER,
    response      TEXT,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT;

-- One-time facts about this installation (e.g. that the first admin token was issued).
CREATE TABLE instance_facts (
    name       TEXT PRIMARY KEY NOT NULL,
    created_at TEXT NOT NULL
) STRICT;

-- A message advances its thread: last_seq, activity time, and a customer's
-- message reopens a closed thread. Part of the insert's own statement.
CREATE TRIGGER messages_advance_thread AFTER INSERT ON messages
BEGIN
    UPDATE threads SET
        last_seq = NEW.seq,
        updated_at = NEW.created_at,
        status = CASE WHEN NEW.role = 'user' AND status = 'closed' THEN 'open' ELSE status END
    WHERE id = NEW.thread_id;
END;
