-- The AI reply path: inbox resolutions and the runs that wait on them,
-- labelled routing examples, settings (the routing policy), and LLM token
-- usage (SQLite).

-- The workflow run waiting on an item (it is sent the event
-- `inbox:<item id>` when the item is resolved), and how it was resolved.
ALTER TABLE inbox_items ADD COLUMN run_id BLOB REFERENCES workflow_runs (id);
ALTER TABLE inbox_items ADD COLUMN resolution TEXT
    CHECK (resolution IN ('answered', 'approved', 'rejected'));
ALTER TABLE inbox_items ADD COLUMN review TEXT;
ALTER TABLE inbox_items ADD COLUMN resolved_by TEXT;
ALTER TABLE inbox_items ADD COLUMN resolved_at TEXT;

CREATE INDEX inbox_items_by_run ON inbox_items (run_id) WHERE run_id IS NOT NULL;

-- Messages labelled with who should answer them, for the embeddings router.
-- `vector` is the embedding as little-endian f32s (4 bytes a dimension):
-- exact, compact, and read whole into memory by the router, so no vector
-- index is needed; `vector_model` names the model that made it, so a change
-- of model is seen and the vectors made again.
CREATE TABLE routing_examples (
    id           BLOB PRIMARY KEY NOT NULL,
    text         TEXT NOT NULL,
    label        TEXT NOT NULL CHECK (label IN ('ai', 'human')),
    vector       BLOB CHECK (length(vector) % 4 = 0),
    vector_model TEXT,
    created_at   TEXT NOT NULL,
    CHECK ((vector IS NULL) = (vector_model IS NULL))
) STRICT;

-- Named settings (JSON), e.g. `policy`, the routing policy.
CREATE TABLE settings (
    name       TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

-- Tokens spent on the LLM, one row per model call: the step of the run that
-- made it is the key, so a step recorded again after a crash counts once.
CREATE TABLE llm_usage (
    run_id            BLOB NOT NULL REFERENCES workflow_runs (id),
    step_seq          INTEGER NOT NULL,
    thread_id         BLOB REFERENCES threads (id),
    purpose           TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created_at        TEXT NOT NULL,
    PRIMARY KEY (run_id, step_seq)
) STRICT;

CREATE INDEX llm_usage_by_thread ON llm_usage (thread_id);

-- "The customer's messages of a thread after seq N" is a range scan of the
-- messages' UNIQUE (thread_id, seq) index: no index of its own.
