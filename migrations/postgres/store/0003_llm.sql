-- What an LLM contributed to a score, and every LLM call with its tokens and cost.

-- detail: {"parts": {mode, weights, llm, builtin, gap…}, "review_flags": […], "notes": […]}
ALTER TABLE scores ADD COLUMN detail TEXT NOT NULL DEFAULT '{}';
ALTER TABLE scores ADD COLUMN prompt_version TEXT;
ALTER TABLE scores ADD COLUMN raw_answer TEXT;

CREATE TABLE llm_calls (
    id             BIGSERIAL PRIMARY KEY,
    lead_id        BIGINT  NOT NULL REFERENCES leads (id),
    event_id       TEXT    NOT NULL,
    purpose        TEXT    NOT NULL,
    model          TEXT    NOT NULL,
    prompt_version TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    input_tokens   BIGINT  NOT NULL,
    output_tokens  BIGINT  NOT NULL,
    cost_usd       DOUBLE PRECISION NOT NULL,
    latency_ms     BIGINT  NOT NULL,
    created_at     BIGINT  NOT NULL
);
CREATE INDEX llm_calls_by_lead ON llm_calls (lead_id);
CREATE INDEX llm_calls_by_time ON llm_calls (created_at);
