-- The human desk: who is online, in which teams and with what capacity;
-- the deadline of each item and each time one passed; the first human
-- response to an item (SQLite).

-- The team an item is for (none: any agent), its priority (it picks the
-- deadline), when a human first responded to it and who, and how often its
-- deadline passed.
ALTER TABLE inbox_items ADD COLUMN team TEXT;
ALTER TABLE inbox_items ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal'
    CHECK (priority IN ('low', 'normal', 'high', 'urgent'));
ALTER TABLE inbox_items ADD COLUMN first_response_at TEXT;
ALTER TABLE inbox_items ADD COLUMN first_response_by TEXT;
ALTER TABLE inbox_items ADD COLUMN expiries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE inbox_items ADD COLUMN last_expired_at TEXT;

-- The assignment sweep reads waiting items oldest first.
CREATE INDEX inbox_items_waiting ON inbox_items (created_at, id) WHERE status = 'open';
-- Loads are counted per holder.
CREATE INDEX inbox_items_by_holder ON inbox_items (claimed_by) WHERE status = 'claimed';

-- Support agents as the desk sees them: presence, capacity, and when each
-- was last given an item (round-robin takes the longest without one).
CREATE TABLE desk_agents (
    name             TEXT PRIMARY KEY NOT NULL,
    capacity         INTEGER NOT NULL CHECK (capacity >= 0),
    presence         TEXT NOT NULL CHECK (presence IN ('online', 'away', 'offline')),
    presence_at      TEXT NOT NULL,
    last_assigned_at TEXT,
    updated_at       TEXT NOT NULL
) STRICT;

CREATE TABLE desk_agent_teams (
    agent TEXT NOT NULL REFERENCES desk_agents (name) ON DELETE CASCADE,
    team  TEXT NOT NULL,
    PRIMARY KEY (agent, team)
) STRICT;

CREATE INDEX desk_agent_teams_by_team ON desk_agent_teams (team, agent);

-- Each time an item's deadline passed, and what the fallback did. One row
-- per item and deadline: a fallback runs once however often it is retried.
CREATE TABLE inbox_expiries (
    id         BLOB PRIMARY KEY NOT NULL,
    item_id    BLOB NOT NULL REFERENCES inbox_items (id),
    due_at     TEXT NOT NULL,
    fallback   TEXT NOT NULL,
    holder     TEXT,
    outcome    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (item_id, due_at)
) STRICT;

CREATE INDEX inbox_expiries_by_created ON inbox_expiries (created_at);
