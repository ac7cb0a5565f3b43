-- The human desk: who is online, in which teams and with what capacity;
-- the deadline of each item and each time one passed; the first human
-- response to an item (PostgreSQL).

-- The team an item is for (none: any agent), its priority (it picks the
-- deadline), when a human first responded to it and who, and how often its
-- deadline passed.
ALTER TABLE inbox_items
    ADD COLUMN team TEXT,
    ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal'
        CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    ADD COLUMN first_response_at TIMESTAMPTZ,
    ADD COLUMN first_response_by TEXT,
    ADD COLUMN expiries INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_expired_at TIMESTAMPTZ;

-- The assignment sweep reads waiting items oldest first.
CREATE INDEX inbox_items_waiting ON inbox_items (created_at, id) WHERE status = 'open';
-- Loads are counted per holder.
CREATE INDEX inbox_items_by_holder ON inbox_items (claimed_by) WHERE status = 'claimed';

-- Support agents as the desk sees them: presence, capacity, and when each
-- was last given an item (round-robin takes the longest without one).
CREATE TABLE desk_agents (
    name             TEXT PRIMARY KEY,
    capacity         INTEGER NOT NULL CHECK (capacity >= 0),
    presence         TEXT NOT NULL CHECK (presence IN ('online', 'away', 'offline')),
    presence_at      TIMESTAMPTZ NOT NULL,
    last_assigned_at TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL
);

CREATE TABLE desk_agent_teams (
    agent TEXT NOT NULL REFERENCES desk_agents (name) ON DELETE CASCADE,
    team  TEXT NOT NULL,
    PRIMARY KEY (agent, team)
);

CREATE INDEX desk_agent_teams_by_team ON desk_agent_teams (team, agent);

-- Each time an item's deadline passed, and what the fallback did. One row
-- per item and deadline: a fallback runs once however often it is retried.
CREATE TABLE inbox_expiries (
    id         UUID PRIMARY KEY,
    item_id    UUID NOT NULL REFERENCES inbox_items (id),
    due_at     TIMESTAMPTZ NOT NULL,
    fallback   TEXT NOT NULL,
    holder     TEXT,
    outcome    JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (item_id, due_at)
);

CREATE INDEX inbox_expiries_by_created ON inbox_expiries (created_at);
