-- WebSocket tickets, inbox items, and the hub's change signal (PostgreSQL).

-- A single-use ticket for a browser's WebSocket upgrade: it stands for the
-- token that minted it, and dies with it.
CREATE TABLE ws_tickets (
    secret_hash TEXT PRIMARY KEY,
    token_id    UUID NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    expires_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX ws_tickets_by_expiry ON ws_tickets (expires_at);

-- Work for humans: a question the AI asked, a draft to approve, an
-- escalation, a handoff.
CREATE TABLE inbox_items (
    id           UUID PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('question', 'approval', 'escalation', 'handoff')),
    thread_id    UUID NOT NULL REFERENCES threads (id),
    message_id   UUID REFERENCES messages (id),
    tool_call_id TEXT,
    body         TEXT,
    suggestion   TEXT,
    reason       TEXT,
    status       TEXT NOT NULL CHECK (status IN ('open', 'claimed', 'resolved', 'expired')),
    claimed_by   TEXT,
    due_at       TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

CREATE INDEX inbox_items_by_status ON inbox_items (status, id);
CREATE INDEX inbox_items_by_thread ON inbox_items (thread_id, id);

-- The hub's signal to every server process: which row changed, and which
-- process changed it (its application_name), never the row itself. Each
-- process re-reads the rows from the tables, so a lost signal loses nothing.
-- NOTIFY is transactional: the signal leaves at commit, or never.
CREATE FUNCTION hub_signal_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tandem_hub', json_build_object(
        'kind', 'message', 'id', NEW.thread_id, 'seq', NEW.seq,
        'node', current_setting('application_name'))::text);
    RETURN NULL;
END
$$;

-- For threads and inbox items: TG_ARGV[0] names the kind.
CREATE FUNCTION hub_signal_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tandem_hub', json_build_object(
        'kind', TG_ARGV[0], 'id', NEW.id,
        'node', current_setting('application_name'))::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_hub_signal AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION hub_signal_message();

CREATE TRIGGER threads_hub_signal AFTER UPDATE ON threads
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.assigned_to IS DISTINCT FROM NEW.assigned_to
          OR OLD.assignee IS DISTINCT FROM NEW.assignee)
    EXECUTE FUNCTION hub_signal_row('thread');

CREATE TRIGGER inbox_items_hub_signal AFTER INSERT OR UPDATE ON inbox_items
    FOR EACH ROW EXECUTE FUNCTION hub_signal_row('inbox');
