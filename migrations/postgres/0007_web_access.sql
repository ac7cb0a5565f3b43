-- How the web pages get in: sessions that expire, widget keys for the
-- customer chat, and the inbox's agent accounts (PostgreSQL).

-- Session tokens (a widget visitor's, an agent's sign-in) expire; tokens
-- minted by the CLI or the API do not (NULL).
ALTER TABLE tokens ADD COLUMN expires_at TIMESTAMPTZ;

-- A public key the chat widget carries: the origins allowed to embed the
-- chat, and the secret an integrator signs its users' ids with (identity
-- verification). The secret is kept as is: it must be read to check an HMAC.
CREATE TABLE widget_keys (
    key               TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    allowed_origins   JSONB NOT NULL DEFAULT '[]',
    identity_secret   TEXT NOT NULL,
    identity_required BOOLEAN NOT NULL DEFAULT FALSE,
    created_at        TIMESTAMPTZ NOT NULL,
    revoked_at        TIMESTAMPTZ
);

-- The people who sign in to the inbox. `name` is the agent name they reply
-- under; the password is kept as an argon2 PHC string.
CREATE TABLE agent_accounts (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    disabled_at   TIMESTAMPTZ
);
