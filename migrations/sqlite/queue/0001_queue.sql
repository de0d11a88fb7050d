-- The embedded queue: one row per queued lead until it is acknowledged.
-- state: 'ready' (available_at = when it may be leased), 'leased' (available_at = lease
-- expiry, after which it is handed out again), 'dead' (out of attempts; last_error says why).
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
    payload      BLOB    NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'leased', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    available_at INTEGER NOT NULL,
    last_error   TEXT,
    enqueued_at  INTEGER NOT NULL
);
CREATE INDEX jobs_by_availability ON jobs (state, available_at, id);

-- Keys of deliveries already accepted: an idempotency key (kept for good) or a body hash
-- (kept for the duplicate window). Written in the same transaction as the job.
CREATE TABLE dedup_keys (
    key        TEXT PRIMARY KEY,
    event_id   TEXT NOT NULL,
    expires_at INTEGER
);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('received', 0), ('duplicates', 0);
