-- WebSocket tickets and inbox items (SQLite).

-- A single-use ticket for a browser's WebSocket upgrade: it stands for the
-- token that minted it, and dies with it.
CREATE TABLE ws_tickets (
    secret_hash TEXT PRIMARY KEY NOT NULL,
    token_id    BLOB NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    expires_at  TEXT NOT NULL
) STRICT;

CREATE INDEX ws_tickets_by_expiry ON ws_tickets (expires_at);

-- Work for humans: a question the AI asked, a draft to approve, an
-- escalation, a handoff.
CREATE TABLE inbox_items (
    id           BLOB PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('question', 'approval', 'escalation', 'handoff')),
    thread_id    BLOB NOT NULL REFERENCES threads (id),
    message_id   BLOB REFERENCES messages (id),
    tool_call_id TEXT,
    body         TEXT,
    suggestion   TEXT,
    reason       TEXT,
    status       TEXT NOT NULL CHECK (status IN ('open', 'claimed', 'resolved', 'expired')),
    claimed_by   TEXT,
    due_at       TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
) STRICT;

CREATE INDEX inbox_items_by_status ON inbox_items (status, id);
CREATE INDEX inbox_items_by_thread ON inbox_items (thread_id, id);
