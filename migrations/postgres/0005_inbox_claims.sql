-- Inbox claims: one agent works an item at a time, and a claim left idle
-- goes back to the queue (PostgreSQL).

-- When the current claim was taken, and when its holder last showed they
-- are still on it (the claim, or a claim again by the same agent). Both are
-- null while the item is not claimed.
ALTER TABLE inbox_items
    ADD COLUMN claimed_at TIMESTAMPTZ,
    ADD COLUMN last_activity_at TIMESTAMPTZ;

-- The idle-claim sweep reads only claimed items, oldest activity first.
CREATE INDEX inbox_items_claims_by_activity ON inbox_items (last_activity_at)
    WHERE status = 'claimed';
