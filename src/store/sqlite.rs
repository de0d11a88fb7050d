//! The SQLite CRM store in `<data-dir>/nurture.db` (WAL). Writes run in `BEGIN IMMEDIATE`
//! transactions so concurrent workers queue for the write lock instead of failing to upgrade.

use std::path::Path;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::sqlite::{SqlitePool, SqliteRow, SqliteSynchronous};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::ai::ScoreCard;
use crate::lead::{LeadEvent, Score};
use crate::queue::embedded::{now_ms, open_sqlite};
use crate::store::{
    Decision, Enriched, EventStatus, LeadView, Processed, Store, StoreError, StoreStats,
    StoredMessage,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite/store");

/// The CRM in one SQLite file.
pub struct SqliteStore {
    pool: SqlitePool,
    // SQLite allows one writer. Queueing writers here, instead of in SQLite's busy handler
    // (which sleeps in steps of up to 100 ms), keeps concurrent workers from stalling.
    writer: Mutex<()>,
}

impl SqliteStore {
    /// Opens (and migrates) `<data_dir>/nurture.db`.
    ///
    /// `synchronous=NORMAL`: in WAL mode a commit survives a process kill (it is in the OS
    /// cache), which is the failure the promises cover. After a power loss the last commits
    /// can be gone while the queue's ack survived, so a lead could lose its CRM record; the
    /// README states this limit. `FULL` here would cost an fsync per stage.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let pool = open_sqlite(&data_dir.join("nurture.db"), SqliteSynchronous::Normal, 8).await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError(format!("store migration failed: {e}")))?;
        Ok(Self {
            pool,
            writer: Mutex::new(()),
        })
    }

    async fn begin(
        &self,
    ) -> Result<(MutexGuard<'_, ()>, Transaction<'static, Sqlite>), StoreError> {
        let guard = self.writer.lock().await;
        Ok((guard, self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }
}

async fn log_event(
    tx: &mut Transaction<'static, Sqlite>,
    lead_id: i64,
    event_id: &str,
    stage: &str,
    detail: &Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (lead_id, event_id, stage, detail, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(lead_id)
    .bind(event_id)
    .bind(stage)
    .bind(detail.to_string())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn message_from_row(row: &SqliteRow) -> Result<StoredMessage, sqlx::Error> {
    Ok(StoredMessage {
        id: row.try_get("id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        channel: row.try_get("channel")?,
        track: row.try_get("track")?,
        template: row.try_get("template")?,
        recipient: row.try_get("recipient")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        status: row.try_get("status")?,
    })
}

fn json_column(row: &SqliteRow, name: &str) -> Value {
    row.try_get::<String, _>(name)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

#[async_trait]
impl Store for SqliteStore {
    async fn enrich(&self, event: &LeadEvent) -> Result<Enriched, StoreError> {
        let lead = &event.lead;
        let now = now_ms();
        let (_writer, mut tx) = self.begin().await?;
        let lead_id: i64 = sqlx::query_scalar(
            "INSERT INTO leads (email_normalized, email, first_name, last_name, company, job_title,
                 phone, phone_raw, country, consent_email, consent_sms, profile, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (email_normalized) DO UPDATE SET
                 email = excluded.email,
                 first_name = COALESCE(excluded.first_name, first_name),
                 last_name = COALESCE(excluded.last_name, last_name),
                 company = COALESCE(excluded.company, company),
                 job_title = COALESCE(excluded.job_title, job_title),
                 phone = COALESCE(excluded.phone, phone),
                 phone_raw = COALESCE(excluded.phone_raw, phone_raw),
                 country = COALESCE(excluded.country, country),
                 consent_email = excluded.consent_email,
                 consent_sms = excluded.consent_sms,
                 profile = excluded.profile,
                 updated_at = excluded.updated_at
             RETURNING id",
        )
        .bind(lead.email.normalized())
        .bind(lead.email.as_str())
        .bind(&lead.first_name)
        .bind(&lead.last_name)
        .bind(&lead.company)
        .bind(&lead.job_title)
        .bind(lead.phone.as_ref().map(|p| p.as_str()))
        .bind(&lead.phone_raw)
        .bind(&lead.country)
        .bind(lead.consent.email_marketing)
        .bind(lead.consent.sms_marketing)
        .bind(serde_json::to_string(lead)?)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;

        let detail =
            json!({ "answers": lead.answers, "behaviour": lead.behaviour, "utm": lead.utm });
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO interactions (lead_id, event_id, kind, source, detail, received_at)
             VALUES (?, ?, 'form_submitted', ?, ?, ?)",
        )
        .bind(lead_id)
        .bind(&event.event_id)
        .bind(&lead.source)
        .bind(detail.to_string())
        .bind(event.received_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();

        let prior_interactions: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM interactions WHERE lead_id = ? AND event_id <> ?",
        )
        .bind(lead_id)
        .bind(&event.event_id)
        .fetch_one(&mut *tx)
        .await?;
        let prior_messages_sent: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE lead_id = ? AND event_id <> ? AND status = 'sent'",
        )
        .bind(lead_id)
        .bind(&event.event_id)
        .fetch_one(&mut *tx)
        .await?;
        let last_track: Option<String> = sqlx::query_scalar(
            "SELECT track FROM processed WHERE lead_id = ? AND event_id <> ?
             ORDER BY processed_at DESC LIMIT 1",
        )
        .bind(lead_id)
        .bind(&event.event_id)
        .fetch_optional(&mut *tx)
        .await?;

        let enriched = Enriched {
            lead_id,
            is_returning: prior_interactions > 0,
            prior_interactions: prior_interactions as u32,
            prior_messages_sent: prior_messages_sent as u32,
            last_track,
        };
        if inserted > 0 {
            log_event(
                &mut tx,
                lead_id,
                &event.event_id,
                "enrich",
                &json!(enriched),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(enriched)
    }

    async fn record_score(
        &self,
        lead_id: i64,
        event_id: &str,
        card: &ScoreCard,
    ) -> Result<ScoreCard, StoreError> {
        let (_writer, mut tx) = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO scores (lead_id, event_id, score, confidence, tone, reasoning, model, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(lead_id)
        .bind(event_id)
        .bind(i64::from(card.score))
        .bind(card.confidence)
        .bind(&card.suggested_tone)
        .bind(serde_json::to_string(&card.reasoning)?)
        .bind(&card.model)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            log_event(&mut tx, lead_id, event_id, "score", &json!(card)).await?;
        }
        let row = sqlx::query(
            "SELECT score, confidence, tone, reasoning, model FROM scores WHERE event_id = ?",
        )
        .bind(event_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let score = Score::new(row.try_get("score")?).map_err(|e| StoreError(e.to_string()))?;
        Ok(ScoreCard {
            score,
            confidence: row.try_get("confidence")?,
            suggested_tone: row.try_get("tone")?,
            reasoning: serde_json::from_str(&row.try_get::<String, _>("reasoning")?)?,
            model: row.try_get("model")?,
        })
    }

    async fn record_decision(&self, decision: &Decision) -> Result<Vec<StoredMessage>, StoreError> {
        let now = now_ms();
        let status = match decision.outcome {
            crate::pipeline::Outcome::Review => "review",
            _ => "pending",
        };
        let (_writer, mut tx) = self.begin().await?;
        let mut inserted = 0;
        for m in &decision.messages {
            inserted += sqlx::query(
                "INSERT OR IGNORE INTO messages (lead_id, event_id, idempotency_key, channel, track,
                     template, recipient, subject, body, status, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(decision.lead_id)
            .bind(&decision.event_id)
            .bind(&m.idempotency_key)
            .bind(m.channel.as_str())
            .bind(decision.track.as_str())
            .bind(&m.template)
            .bind(&m.recipient)
            .bind(&m.subject)
            .bind(&m.body)
            .bind(status)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !decision.review_reasons.is_empty() {
            inserted += sqlx::query(
                "INSERT OR IGNORE INTO review_tasks (lead_id, event_id, title, reasons, created_at)
                 VALUES (?, ?, 'AI draft to review', ?, ?)",
            )
            .bind(decision.lead_id)
            .bind(&decision.event_id)
            .bind(serde_json::to_string(&decision.review_reasons)?)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        let logged: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM events WHERE event_id = ? AND stage = 'route'",
        )
        .bind(&decision.event_id)
        .fetch_one(&mut *tx)
        .await?;
        if logged == 0 || inserted > 0 {
            for (stage, detail) in &decision.log {
                log_event(&mut tx, decision.lead_id, &decision.event_id, stage, detail).await?;
            }
        }
        let rows = sqlx::query("SELECT * FROM messages WHERE event_id = ? ORDER BY id")
            .bind(&decision.event_id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(message_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn finish(&self, p: &Processed) -> Result<bool, StoreError> {
        let (_writer, mut tx) = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO processed (event_id, lead_id, track, outcome, latency_ms, processed_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&p.event_id)
        .bind(p.lead_id)
        .bind(p.track.as_str())
        .bind(p.outcome.as_str())
        .bind(p.latency_ms)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if p.outcome == crate::pipeline::Outcome::Sent {
            sqlx::query("UPDATE messages SET status = 'sent', sent_at = ? WHERE event_id = ? AND status = 'pending'")
                .bind(now_ms())
                .bind(&p.event_id)
                .execute(&mut *tx)
                .await?;
        }
        if inserted > 0 {
            let detail = json!({ "outcome": p.outcome.as_str(), "latency_ms": p.latency_ms });
            log_event(&mut tx, p.lead_id, &p.event_id, "act", &detail).await?;
        }
        tx.commit().await?;
        Ok(inserted > 0)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let processed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed")
            .fetch_one(&self.pool)
            .await?;
        let by_track: Vec<(String, i64)> =
            sqlx::query_as("SELECT track, COUNT(*) FROM processed GROUP BY track")
                .fetch_all(&self.pool)
                .await?;
        let by_outcome: Vec<(String, i64)> =
            sqlx::query_as("SELECT outcome, COUNT(*) FROM processed GROUP BY outcome")
                .fetch_all(&self.pool)
                .await?;
        let percentile = |p: f64| ((processed as f64 - 1.0) * p).round().max(0.0) as i64;
        let latency_at = |offset: i64| {
            sqlx::query_scalar::<_, i64>(
                "SELECT latency_ms FROM processed ORDER BY latency_ms LIMIT 1 OFFSET ?",
            )
            .bind(offset)
            .fetch_optional(&self.pool)
        };
        let p50 = latency_at(percentile(0.50)).await?.unwrap_or(0);
        let p99 = latency_at(percentile(0.99)).await?.unwrap_or(0);
        let reasons: Vec<(String,)> =
            sqlx::query_as("SELECT value FROM review_tasks, json_each(review_tasks.reasons)")
                .fetch_all(&self.pool)
                .await?;
        let mut review_reasons = std::collections::BTreeMap::new();
        for (reason,) in reasons {
            let code = reason
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            *review_reasons.entry(code).or_insert(0) += 1;
        }
        let to_map =
            |rows: Vec<(String, i64)>| rows.into_iter().map(|(k, v)| (k, v as u64)).collect();
        Ok(StoreStats {
            processed: processed as u64,
            by_track: to_map(by_track),
            by_outcome: to_map(by_outcome),
            latency_p50_ms: p50 as f64,
            latency_p99_ms: p99 as f64,
            review_reasons,
        })
    }

    async fn event_status(&self, event_id: &str) -> Result<Option<EventStatus>, StoreError> {
        let row = sqlx::query(
            "SELECT i.lead_id, p.track, p.outcome FROM interactions i
             LEFT JOIN processed p ON p.event_id = i.event_id WHERE i.event_id = ?",
        )
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(EventStatus {
            event_id: event_id.to_owned(),
            lead_id: row.try_get("lead_id")?,
            track: row.try_get("track")?,
            outcome: row.try_get("outcome")?,
        }))
    }

    async fn lead_view(&self, lead_id: i64) -> Result<Option<LeadView>, StoreError> {
        let Some(lead) = sqlx::query("SELECT email, profile FROM leads WHERE id = ?")
            .bind(lead_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let rows = |sql: &'static str| sqlx::query(sql).bind(lead_id).fetch_all(&self.pool);
        let interactions = rows("SELECT * FROM interactions WHERE lead_id = ? ORDER BY id").await?;
        let scores = rows("SELECT * FROM scores WHERE lead_id = ? ORDER BY id").await?;
        let messages = rows("SELECT * FROM messages WHERE lead_id = ? ORDER BY id").await?;
        let tasks = rows("SELECT * FROM review_tasks WHERE lead_id = ? ORDER BY id").await?;
        let events = rows("SELECT * FROM events WHERE lead_id = ? ORDER BY id").await?;

        Ok(Some(LeadView {
            id: lead_id,
            email: lead.try_get("email")?,
            profile: json_column(&lead, "profile"),
            interactions: interactions
                .iter()
                .map(|r| {
                    json!({
                        "event_id": r.try_get::<String, _>("event_id").unwrap_or_default(),
                        "source": r.try_get::<String, _>("source").unwrap_or_default(),
                        "received_at_ms": r.try_get::<i64, _>("received_at").unwrap_or_default(),
                        "detail": json_column(r, "detail"),
                    })
                })
                .collect(),
            scores: scores
                .iter()
                .map(|r| {
                    json!({
                        "event_id": r.try_get::<String, _>("event_id").unwrap_or_default(),
                        "score": r.try_get::<i64, _>("score").unwrap_or_default(),
                        "confidence": r.try_get::<f64, _>("confidence").unwrap_or_default(),
                        "tone": r.try_get::<String, _>("tone").unwrap_or_default(),
                        "model": r.try_get::<String, _>("model").unwrap_or_default(),
                        "reasoning": json_column(r, "reasoning"),
                    })
                })
                .collect(),
            messages: messages
                .iter()
                .map(message_from_row)
                .collect::<Result<_, _>>()?,
            review_tasks: tasks
                .iter()
                .map(|r| {
                    json!({
                        "id": r.try_get::<i64, _>("id").unwrap_or_default(),
                        "event_id": r.try_get::<String, _>("event_id").unwrap_or_default(),
                        "title": r.try_get::<String, _>("title").unwrap_or_default(),
                        "status": r.try_get::<String, _>("status").unwrap_or_default(),
                        "reasons": json_column(r, "reasons"),
                    })
                })
                .collect(),
            events: events
                .iter()
                .map(|r| {
                    json!({
                        "event_id": r.try_get::<String, _>("event_id").unwrap_or_default(),
                        "stage": r.try_get::<String, _>("stage").unwrap_or_default(),
                        "detail": json_column(r, "detail"),
                    })
                })
                .collect(),
        }))
    }
}
