-- The AI reply path: inbox resolutions and the runs that wait on them,
-- labelled routing examples, settings (the routing policy), and LLM token
-- usage (PostgreSQL).

-- The workflow run waiting on an item (it is sent the event
-- `inbox:<item id>` when the item is resolved), and how it was resolved.
ALTER TABLE inbox_items
    ADD COLUMN run_id UUID REFERENCES workflow_runs (id),
    ADD COLUMN resolution TEXT CHECK (resolution IN ('answered', 'approved', 'rejected')),
    ADD COLUMN review TEXT,
    ADD COLUMN resolved_by TEXT,
    ADD COLUMN resolved_at TIMESTAMPTZ;

CREATE INDEX inbox_items_by_run ON inbox_items (run_id) WHERE run_id IS NOT NULL;

-- Messages labelled with who should answer them, for the embeddings router.
-- `vector` is the embedding as little-endian f32s (4 bytes a dimension), the
-- same bytes as on SQLite: exact, compact, and read whole into memory by the
-- router, so no vector extension is needed; `vector_model` names the model
-- that made it, so a change of model is seen and the vectors made again.
CREATE TABLE routing_examples (
    id           UUID PRIMARY KEY,
    text         TEXT NOT NULL,
    label        TEXT NOT NULL CHECK (label IN ('ai', 'human')),
    vector       BYTEA CHECK (octet_length(vector) % 4 = 0),
    vector_model TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    CHECK ((vector IS NULL) = (vector_model IS NULL))
);

-- Named settings (JSON), e.g. `policy`, the routing policy.
CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Tokens spent on the LLM, one row per model call: the step of the run that
-- made it is the key, so a step recorded again after a crash counts once.
CREATE TABLE llm_usage (
    run_id            UUID NOT NULL REFERENCES workflow_runs (id),
    step_seq          BIGINT NOT NULL,
    thread_id         UUID REFERENCES threads (id),
    purpose           TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, step_seq)
);

CREATE INDEX llm_usage_by_thread ON llm_usage (thread_id);

-- "The customer's messages of a thread after seq N" is a range scan of the
-- messages' UNIQUE (thread_id, seq) index: no index of its own.
