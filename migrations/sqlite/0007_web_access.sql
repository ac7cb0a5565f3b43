-- How the web pages get in: sessions that expire, widget keys for the
-- customer chat, and the inbox's agent accounts (SQLite).

-- Session tokens (a widget visitor's, an agent's sign-in) expire; tokens
-- minted by the CLI or the API do not (NULL).
ALTER TABLE tokens ADD COLUMN expires_at TEXT;

-- A public key the chat widget carries: the origins allowed to embed the
-- chat, and the secret an integrator signs its users' ids with (identity
-- verification). The secret is kept as is: it must be read to check an HMAC.
CREATE TABLE widget_keys (
    key               TEXT PRIMARY KEY NOT NULL,
    name              TEXT NOT NULL,
    allowed_origins   TEXT NOT NULL DEFAULT '[]',
    identity_secret   TEXT NOT NULL,
    identity_required INTEGER NOT NULL DEFAULT 0 CHECK (identity_required IN (0, 1)),
    created_at        TEXT NOT NULL,
    revoked_at        TEXT
) STRICT;

-- The people who sign in to the inbox. `name` is the agent name they reply
-- under; the password is kept as an argon2 PHC string.
CREATE TABLE agent_accounts (
    name          TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    disabled_at   TEXT
) STRICT;
