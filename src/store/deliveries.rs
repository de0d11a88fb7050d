//! The delivery log of broker-backed intake, kept in the CRM database so every ingest
//! process sees the same keys. The embedded queue keeps its own in `queue.db`.

use async_trait::async_trait;
use sqlx::Row;

use crate::queue::embedded::now_ms;
use crate::queue::{Claim, DedupKey, DeliveryLog, QueueError};
use crate::store::{SqlStore, StoreError};

fn failed(e: impl Into<StoreError>) -> QueueError {
    QueueError(e.into().0)
}

#[async_trait]
impl DeliveryLog for SqlStore {
    async fn claim(
        &self,
        keys: &[DedupKey],
        event_id: &str,
        stale_after_ms: i64,
    ) -> Result<Claim, QueueError> {
        let now = now_ms();
        let (_writer, mut tx) = self.begin().await.map_err(failed)?;
        let mut use_id = event_id.to_owned();
        for key in keys {
            let row = sqlx::query(
                "SELECT event_id, state, claimed_at FROM deliveries
                 WHERE key = $1 AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(&key.key)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(failed)?;
            let Some(row) = row else { continue };
            let existing: String = row.try_get("event_id").map_err(failed)?;
            let state: String = row.try_get("state").map_err(failed)?;
            let claimed_at: i64 = row.try_get("claimed_at").map_err(failed)?;
            if state == "queued" {
                return Ok(Claim::Duplicate { event_id: existing });
            }
            if now - claimed_at < stale_after_ms {
                return Ok(Claim::InFlight);
            }
            use_id = existing;
        }
        for key in keys {
            // Takes a key only when it is free, expired, or already ours (a takeover);
            // otherwise another request claimed it in between and this one backs off.
            let taken = sqlx::query(
                "INSERT INTO deliveries (key, event_id, state, claimed_at, expires_at)
                 VALUES ($1, $2, 'pending', $3, $4)
                 ON CONFLICT (key) DO UPDATE SET event_id = excluded.event_id, state = 'pending',
                     claimed_at = excluded.claimed_at, expires_at = excluded.expires_at
                 WHERE (deliveries.expires_at IS NOT NULL AND deliveries.expires_at <= $5)
                    OR (deliveries.event_id = excluded.event_id AND deliveries.claimed_at <= $6)",
            )
            .bind(&key.key)
            .bind(&use_id)
            .bind(now)
            .bind(key.ttl_ms.map(|ttl| now + ttl))
            .bind(now)
            .bind(now - stale_after_ms)
            .execute(&mut *tx)
            .await
            .map_err(failed)?
            .rows_affected();
            if taken == 0 {
                return Ok(Claim::InFlight);
            }
        }
        tx.commit().await.map_err(failed)?;
        Ok(Claim::Claimed { event_id: use_id })
    }

    async fn confirm(&self, keys: &[DedupKey], event_id: &str) -> Result<(), QueueError> {
        let (_writer, mut tx) = self.begin().await.map_err(failed)?;
        for key in keys {
            sqlx::query("UPDATE deliveries SET state = 'queued' WHERE key = $1 AND event_id = $2")
                .bind(&key.key)
                .bind(event_id)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        sqlx::query("UPDATE intake_counters SET value = value + 1 WHERE name = 'received'")
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)
    }

    async fn release(&self, keys: &[DedupKey], event_id: &str) -> Result<(), QueueError> {
        let (_writer, mut tx) = self.begin().await.map_err(failed)?;
        for key in keys {
            // Kept, not deleted: the event id must survive every retry of this delivery (a
            // refused takeover may follow an uncertain publish that did land). Made stale at
            // once, so the next retry takes it over without waiting.
            sqlx::query(
                "UPDATE deliveries SET claimed_at = 0 WHERE key = $1 AND event_id = $2 AND state = 'pending'",
            )
            .bind(&key.key)
            .bind(event_id)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)
    }

    async fn count_duplicate(&self) -> Result<(), QueueError> {
        let (_writer, mut tx) = self.begin().await.map_err(failed)?;
        sqlx::query("UPDATE intake_counters SET value = value + 1 WHERE name = 'duplicates'")
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)
    }

    async fn intake_counts(&self) -> Result<(u64, u64), QueueError> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT name, value FROM intake_counters")
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
        let value = |name: &str| {
            rows.iter()
                .find(|(n, _)| n == name)
                .map_or(0, |r| r.1.max(0) as u64)
        };
        Ok((value("received"), value("duplicates")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_claim_is_retaken_under_the_same_event_id() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("n.db").display());
        let store = SqlStore::connect(&url, 2).await.unwrap();
        let keys = [DedupKey {
            key: "idem:k".into(),
            ttl_ms: None,
        }];

        let first = store.claim(&keys, "event-1", 60_000).await.unwrap();
        let while_pending = store.claim(&keys, "event-2", 60_000).await.unwrap();
        store.release(&keys, "event-1").await.unwrap();
        let after_refusal = store.claim(&keys, "event-3", 60_000).await.unwrap();
        store.confirm(&keys, "event-1").await.unwrap();
        let after_confirm = store.claim(&keys, "event-4", 60_000).await.unwrap();

        assert_eq!(
            first,
            Claim::Claimed {
                event_id: "event-1".into()
            }
        );
        assert_eq!(while_pending, Claim::InFlight);
        assert_eq!(
            after_refusal,
            Claim::Claimed {
                event_id: "event-1".into()
            }
        );
        assert_eq!(
            after_confirm,
            Claim::Duplicate {
                event_id: "event-1".into()
            }
        );
        assert_eq!(store.intake_counts().await.unwrap(), (1, 0));
    }
}
