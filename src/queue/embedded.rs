//! The embedded queue: a leases table in its own SQLite file (WAL), so that `nurture serve`
//! needs no broker. Enqueues commit with `synchronous=FULL` because a 202 promises them;
//! leases and acks use `NORMAL`, since losing one only causes a redelivery, which the
//! pipeline absorbs (outgoing messages carry idempotency keys).

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{Mutex, Notify};

use crate::config::WorkerSettings;
use crate::queue::{
    DeadLetter, Delivery, Enqueued, NewMessage, Queue, QueueError, QueueStats, Retried, backoff,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite/queue");

/// Durable queue in `<data-dir>/queue.db`.
pub struct EmbeddedQueue {
    durable: SqlitePool,
    fast: SqlitePool,
    settings: WorkerSettings,
    wake: Notify,
    // One writer at a time, queued here rather than in SQLite's sleeping busy handler.
    writer: Mutex<()>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Opens a SQLite file in WAL mode with the given sync level and a generous busy timeout.
pub async fn open_sqlite(
    path: &Path,
    sync: SqliteSynchronous,
    max_connections: u32,
) -> Result<SqlitePool, sqlx::Error> {
    let url = format!("sqlite://{}", path.display());
    let options = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sync)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true)
        // Pages are read through a memory map instead of one pread per page: each write
        // invalidates the other connections' page caches, and re-reading them by syscall
        // dominated the worker's time before this.
        .pragma("mmap_size", "268435456");
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
}

impl EmbeddedQueue {
    /// Opens an existing queue file, for commands that inspect one (`nurture dlq`); a
    /// mistyped data dir is an error instead of a new empty queue.
    pub async fn open_existing(
        data_dir: &Path,
        settings: WorkerSettings,
    ) -> Result<Self, QueueError> {
        if !data_dir.join("queue.db").is_file() {
            return Err(QueueError(format!(
                "no queue in '{}' (no queue.db)",
                data_dir.display()
            )));
        }
        Self::open(data_dir, settings).await
    }

    /// Opens (and migrates) the queue file under `data_dir`.
    pub async fn open(data_dir: &Path, settings: WorkerSettings) -> Result<Self, QueueError> {
        let path = data_dir.join("queue.db");
        let durable = open_sqlite(&path, SqliteSynchronous::Full, 4).await?;
        MIGRATOR
            .run(&durable)
            .await
            .map_err(|e| QueueError(format!("queue migration failed: {e}")))?;
        let fast = open_sqlite(&path, SqliteSynchronous::Normal, 4).await?;
        Ok(Self {
            durable,
            fast,
            settings,
            wake: Notify::new(),
            writer: Mutex::new(()),
        })
    }

    async fn existing_event_for(
        &self,
        message: &NewMessage,
        now: i64,
    ) -> Result<Option<String>, QueueError> {
        for key in &message.dedup_keys {
            let found: Option<String> = sqlx::query_scalar(
                "SELECT event_id FROM dedup_keys WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
            )
            .bind(&key.key)
            .bind(now)
            .fetch_optional(&self.durable)
            .await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    async fn count_duplicate(&self) -> Result<(), QueueError> {
        let _writer = self.writer.lock().await;
        sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'duplicates'")
            .execute(&self.fast)
            .await?;
        Ok(())
    }

    async fn insert_new(
        &self,
        message: &NewMessage,
        now: i64,
    ) -> Result<Option<String>, QueueError> {
        let _writer = self.writer.lock().await;
        let mut tx = self.durable.begin_with("BEGIN IMMEDIATE").await?;
        // Checked again inside the write lock: two identical deliveries racing must not both
        // be queued.
        for key in &message.dedup_keys {
            let found: Option<String> = sqlx::query_scalar(
                "SELECT event_id FROM dedup_keys WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
            )
            .bind(&key.key)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        for key in &message.dedup_keys {
            sqlx::query(
                "INSERT OR REPLACE INTO dedup_keys (key, event_id, expires_at) VALUES (?, ?, ?)",
            )
            .bind(&key.key)
            .bind(&message.event_id)
            .bind(key.ttl_ms.map(|ttl| now + ttl))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO jobs (event_id, payload, state, attempts, available_at, enqueued_at)
             VALUES (?, ?, 'ready', 0, ?, ?)",
        )
        .bind(&message.event_id)
        .bind(&message.payload)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'received'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(None)
    }

    async fn set_dead(&self, handle: i64, reason: &str) -> Result<(), QueueError> {
        let _writer = self.writer.lock().await;
        sqlx::query("UPDATE jobs SET state = 'dead', last_error = ? WHERE id = ?")
            .bind(reason)
            .bind(handle)
            .execute(&self.durable)
            .await?;
        Ok(())
    }

    /// Puts dead-lettered messages back in the ready state with a fresh attempt count.
    /// `event_id = None` replays all of them. Returns how many were replayed.
    pub async fn replay_dead(&self, event_id: Option<&str>) -> Result<u64, QueueError> {
        let _writer = self.writer.lock().await;
        let result = sqlx::query(
            "UPDATE jobs SET state = 'ready', attempts = 0, available_at = ?
             WHERE state = 'dead' AND (? IS NULL OR event_id = ?)",
        )
        .bind(now_ms())
        .bind(event_id)
        .bind(event_id)
        .execute(&self.durable)
        .await?;
        self.wake.notify_waiters();
        Ok(result.rows_affected())
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn enqueue(&self, message: NewMessage) -> Result<Enqueued, QueueError> {
        let now = now_ms();
        let existing = match self.existing_event_for(&message, now).await? {
            Some(found) => Some(found),
            None => self.insert_new(&message, now).await?,
        };
        if let Some(event_id) = existing {
            self.count_duplicate().await?;
            return Ok(Enqueued::Duplicate { event_id });
        }
        self.wake.notify_waiters();
        Ok(Enqueued::Queued {
            event_id: message.event_id,
        })
    }

    async fn lease(&self) -> Result<Option<Delivery>, QueueError> {
        let now = now_ms();
        let lease_until = now + (self.settings.visibility_timeout_seconds * 1000) as i64;
        let writer = self.writer.lock().await;
        let row = sqlx::query(
            "UPDATE jobs SET state = 'leased', attempts = attempts + 1, available_at = ?
             WHERE id = (SELECT id FROM jobs WHERE state IN ('ready', 'leased') AND available_at <= ?
                         ORDER BY available_at, id LIMIT 1)
             RETURNING id, event_id, payload, attempts",
        )
        .bind(lease_until)
        .bind(now)
        .fetch_optional(&self.fast)
        .await?;
        drop(writer);
        let Some(row) = row else {
            return Ok(None);
        };
        let delivery = Delivery {
            handle: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            payload: row.try_get("payload")?,
            attempt: row.try_get::<i64, _>("attempts")? as u32,
        };
        // A lease that keeps expiring (the process died while handling it, again and again)
        // must not circulate for ever: past the last attempt it is dead-lettered here.
        if delivery.attempt > self.settings.max_attempts {
            let reason = format!(
                "lease expired after {} attempts without an ack (the worker died or hung)",
                self.settings.max_attempts
            );
            self.set_dead(delivery.handle, &reason).await?;
            tracing::error!(event_id = %delivery.event_id, %reason, "LeadDeadLettered");
            crate::telemetry::lead_dead_lettered(
                crate::telemetry::DeadLetterCause::LeaseExpired,
                delivery.attempt - 1,
            );
            return Box::pin(self.lease()).await;
        }
        Ok(Some(delivery))
    }

    async fn wait_for_work(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.wake.notified()).await;
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let _writer = self.writer.lock().await;
        // `attempts` identifies the lease: a worker whose lease expired and was handed to
        // another cannot remove the message from under it.
        sqlx::query("DELETE FROM jobs WHERE id = ? AND state = 'leased' AND attempts = ?")
            .bind(delivery.handle)
            .bind(delivery.attempt)
            .execute(&self.fast)
            .await?;
        Ok(())
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        reason: &str,
        at_least: Option<std::time::Duration>,
    ) -> Result<Retried, QueueError> {
        if delivery.attempt >= self.settings.max_attempts {
            self.set_dead(delivery.handle, reason).await?;
            return Ok(Retried::DeadLettered);
        }
        let s = &self.settings;
        // A provider's wait raises the delay but never past the backoff cap: an hour-long
        // rate-limit reset must not park leads for an hour (they come back, find the
        // process still paused, and fall back on their last attempt).
        let at_least_ms = at_least
            .map_or(0, |d| d.as_millis() as u64)
            .min(s.backoff_max_ms);
        let delay_ms = backoff::delay_ms(delivery.attempt, s.backoff_base_ms, s.backoff_max_ms)
            .max(at_least_ms);
        let _writer = self.writer.lock().await;
        sqlx::query(
            "UPDATE jobs SET state = 'ready', available_at = ?, last_error = ?
             WHERE id = ? AND state = 'leased' AND attempts = ?",
        )
        .bind(now_ms() + delay_ms as i64)
        .bind(reason)
        .bind(delivery.handle)
        .bind(delivery.attempt)
        .execute(&self.durable)
        .await?;
        Ok(Retried::Scheduled { delay_ms })
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        self.set_dead(delivery.handle, reason).await
    }

    async fn replay_dead(&self, event_id: Option<&str>) -> Result<u64, QueueError> {
        EmbeddedQueue::replay_dead(self, event_id).await
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, QueueError> {
        let rows = sqlx::query(
            "SELECT id, event_id, attempts, last_error FROM jobs WHERE state = 'dead' ORDER BY id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.fast)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    handle: row.try_get("id")?,
                    event_id: row.try_get("event_id")?,
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                    reason: row
                        .try_get::<Option<String>, _>("last_error")?
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let counters: Vec<(String, i64)> = sqlx::query_as("SELECT name, value FROM counters")
            .fetch_all(&self.fast)
            .await?;
        let states: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                .fetch_all(&self.fast)
                .await?;
        let counter =
            |name: &str| counters.iter().find(|(n, _)| n == name).map_or(0, |c| c.1) as u64;
        let state = |name: &str| states.iter().find(|(n, _)| n == name).map_or(0, |c| c.1) as u64;
        Ok(QueueStats {
            received: counter("received"),
            duplicates: counter("duplicates"),
            dead_lettered: state("dead"),
            depth: state("ready") + state("leased"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::DedupKey;

    fn message(event_id: &str, key: &str) -> NewMessage {
        NewMessage {
            event_id: event_id.into(),
            dedup_keys: vec![DedupKey {
                key: key.into(),
                ttl_ms: None,
            }],
            payload: b"{}".to_vec(),
        }
    }

    async fn queue(dir: &Path, max_attempts: u32) -> EmbeddedQueue {
        let settings = WorkerSettings {
            max_attempts,
            backoff_base_ms: 1,
            backoff_max_ms: 2,
            ..WorkerSettings::default()
        };
        EmbeddedQueue::open(dir, settings).await.unwrap()
    }

    #[tokio::test]
    async fn the_same_key_is_queued_once_and_counted_as_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path(), 3).await;

        let first = q.enqueue(message("e1", "k")).await.unwrap();
        let second = q.enqueue(message("e2", "k")).await.unwrap();

        assert_eq!(
            first,
            Enqueued::Queued {
                event_id: "e1".into()
            }
        );
        assert_eq!(
            second,
            Enqueued::Duplicate {
                event_id: "e1".into()
            }
        );
        let stats = q.stats().await.unwrap();
        assert_eq!((stats.received, stats.duplicates, stats.depth), (1, 1, 1));
    }

    #[tokio::test]
    async fn a_leased_message_is_not_leased_twice_and_ack_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path(), 3).await;
        q.enqueue(message("e1", "k")).await.unwrap();

        let first = q.lease().await.unwrap().unwrap();
        let second = q.lease().await.unwrap();
        q.ack(&first).await.unwrap();

        assert_eq!(first.attempt, 1);
        assert!(second.is_none());
        assert_eq!(q.stats().await.unwrap().depth, 0);
    }

    #[tokio::test]
    async fn retries_run_out_into_the_dead_letter_state_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path(), 2).await;
        q.enqueue(message("e1", "k")).await.unwrap();

        let first = q.lease().await.unwrap().unwrap();
        let scheduled = q.retry(&first, "boom 1", None).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let second = loop {
            if let Some(d) = q.lease().await.unwrap() {
                break d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "retry never became ready"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let dead = q.retry(&second, "boom 2", None).await.unwrap();

        assert!(matches!(scheduled, Retried::Scheduled { .. }));
        assert_eq!(second.attempt, 2);
        assert_eq!(dead, Retried::DeadLettered);
        let letters = q.dead_letters(10).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (letters[0].attempts, letters[0].reason.as_str()),
            (2, "boom 2")
        );
        assert_eq!(q.replay_dead(None).await.unwrap(), 1);
        assert_eq!(q.lease().await.unwrap().unwrap().attempt, 1);
    }
}
