-- Delivery keys for the RabbitMQ queue (the embedded queue keeps its own in queue.db).
-- state 'pending': claimed by an ingest process, publish not yet confirmed;
-- 'queued': confirmed by the broker. A pending row older than the confirm timeout belongs
-- to an ingest process that died; the next delivery with that key takes it over and
-- publishes again under the same event id, so the pipeline sees one event.
CREATE TABLE deliveries (
    key        TEXT    PRIMARY KEY,
    event_id   TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('pending', 'queued')),
    claimed_at BIGINT  NOT NULL,
    expires_at BIGINT
);

CREATE TABLE intake_counters (
    name  TEXT PRIMARY KEY,
    value BIGINT  NOT NULL
);
INSERT INTO intake_counters (name, value) VALUES ('received', 0), ('duplicates', 0);
