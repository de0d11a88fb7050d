-- The CRM store on PostgreSQL: the same tables as migrations/sqlite/store, in PostgreSQL types.
-- People, what they did, what nurture decided, what it sent.

-- One row per person; identity is the normalised email (lowercase, punycode domain).
CREATE TABLE leads (
    id               BIGSERIAL PRIMARY KEY,
    email_normalized TEXT    NOT NULL UNIQUE,
    email            TEXT    NOT NULL,
    first_name       TEXT,
    last_name        TEXT,
    company          TEXT,
    job_title        TEXT,
    phone            TEXT,
    phone_raw        TEXT,
    country          TEXT,
    consent_email    BOOLEAN NOT NULL,
    consent_sms      BOOLEAN NOT NULL,
    profile          TEXT    NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

-- Every accepted delivery is one interaction; event_id makes redelivery harmless.
CREATE TABLE interactions (
    id          BIGSERIAL PRIMARY KEY,
    lead_id     BIGINT  NOT NULL REFERENCES leads (id),
    event_id    TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX interactions_by_lead ON interactions (lead_id);

CREATE TABLE scores (
    id          BIGSERIAL PRIMARY KEY,
    lead_id     BIGINT  NOT NULL REFERENCES leads (id),
    event_id    TEXT    NOT NULL UNIQUE,
    score       BIGINT NOT NULL CHECK (score BETWEEN 1 AND 100),
    confidence  DOUBLE PRECISION NOT NULL,
    tone        TEXT    NOT NULL,
    reasoning   TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX scores_by_lead ON scores (lead_id);

-- Outgoing messages. The idempotency key is stored before delivery; a redelivered lead
-- finds its row and never produces a second send.
CREATE TABLE messages (
    id              BIGSERIAL PRIMARY KEY,
    lead_id         BIGINT  NOT NULL REFERENCES leads (id),
    event_id        TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,
    channel         TEXT    NOT NULL,
    track           TEXT    NOT NULL,
    template        TEXT    NOT NULL,
    recipient       TEXT    NOT NULL,
    subject         TEXT,
    body            TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'review')),
    created_at      BIGINT NOT NULL,
    sent_at         BIGINT
);
CREATE INDEX messages_by_lead ON messages (lead_id);
CREATE INDEX messages_by_event ON messages (event_id);

-- "AI draft to review": what a human must look at, and why.
CREATE TABLE review_tasks (
    id         BIGSERIAL PRIMARY KEY,
    lead_id    BIGINT  NOT NULL REFERENCES leads (id),
    event_id   TEXT    NOT NULL UNIQUE,
    title      TEXT    NOT NULL,
    reasons    TEXT    NOT NULL,
    status     TEXT    NOT NULL DEFAULT 'open',
    created_at BIGINT NOT NULL
);
CREATE INDEX review_tasks_by_lead ON review_tasks (lead_id);

-- The event log: every stage's decision, in order.
CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    lead_id    BIGINT  NOT NULL REFERENCES leads (id),
    event_id   TEXT    NOT NULL,
    stage      TEXT    NOT NULL,
    detail     TEXT    NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX events_by_lead ON events (lead_id);

-- One row per fully handled delivery: the read side counts these.
CREATE TABLE processed (
    event_id     TEXT PRIMARY KEY,
    lead_id      BIGINT  NOT NULL REFERENCES leads (id),
    track        TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    latency_ms   BIGINT NOT NULL,
    processed_at BIGINT NOT NULL
);
CREATE INDEX processed_by_latency ON processed (latency_ms);
