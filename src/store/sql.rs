//! The CRM store on SQL: SQLite (`<data-dir>/nurture.db`, WAL) for the embedded default,
//! PostgreSQL for production. One implementation over sqlx's `Any` driver: the statements
//! are written in the dialect both accept (`$n` parameters, `ON CONFLICT`, `RETURNING`), and
//! each backend has its own migrations. Unique constraints carry the identity rules, so two
//! workers racing on one lead cannot create two leads or two messages.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::MigrateDatabase;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::ai::ScoreCard;
use crate::ai::client::LlmCall;
use crate::lead::{LeadEvent, Score};
use crate::queue::embedded::now_ms;
use crate::store::{
    Decision, Enriched, EventStatus, LeadLock, LeadView, LlmStats, ModelUsage, Processed, Store,
    StoreError, StoreStats, StoredMessage,
};

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite/store");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres/store");

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file, one writer at a time.
    Sqlite,
    /// A server shared by every process.
    Postgres,
}

/// The CRM on SQLite or PostgreSQL.
pub struct SqlStore {
    pub(super) pool: AnyPool,
    backend: Backend,
    // SQLite allows one writer. Queueing writers here, instead of in SQLite's busy handler
    // (which sleeps in steps of up to 100 ms), keeps concurrent workers from stalling.
    // PostgreSQL needs no such queue.
    writer: Mutex<()>,
    // SQLite's per-lead locks, held in this process (see `lock_lead`): striped, so memory
    // stays bounded; two leads sharing a stripe only wait for each other.
    lead_stripes: Vec<Arc<Mutex<()>>>,
}

impl SqlStore {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`) and runs its migrations.
    ///
    /// SQLite runs with `synchronous=NORMAL`: in WAL mode a commit survives a process kill
    /// (it is in the OS cache), which is the failure the promises cover. After a power loss
    /// the last commits can be gone while the queue's ack survived; the README states this
    /// limit. `FULL` would cost an fsync per stage.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        if backend == Backend::Postgres && !sqlx::Postgres::database_exists(&url).await? {
            // Several processes starting together race to create it: losing is fine.
            if let Err(e) = sqlx::Postgres::create_database(&url).await
                && !sqlx::Postgres::database_exists(&url).await?
            {
                return Err(e.into());
            }
        }
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in SQLITE_PRAGMAS {
                            conn.execute(*pragma).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError(format!("store migration failed: {e}")))?;
        Ok(Self {
            pool,
            backend,
            writer: Mutex::new(()),
            lead_stripes: (0..LEAD_STRIPES)
                .map(|_| Arc::new(Mutex::new(())))
                .collect(),
        })
    }

    /// The backend behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(super) async fn begin(
        &self,
    ) -> Result<(Option<MutexGuard<'_, ()>>, Transaction<'static, Any>), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let guard = self.writer.lock().await;
                Ok((Some(guard), self.pool.begin_with("BEGIN IMMEDIATE").await?))
            }
            Backend::Postgres => Ok((None, self.pool.begin().await?)),
        }
    }
}

/// Number of in-process lead locks on SQLite.
const LEAD_STRIPES: usize = 256;

/// Set on every SQLite connection. `mmap_size`: pages are read through a memory map instead
/// of one pread each, which matters because every write invalidates the other connections'
/// page caches.
const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 30000",
    "PRAGMA foreign_keys = ON",
    "PRAGMA mmap_size = 268435456",
];

async fn log_event(
    tx: &mut Transaction<'static, Any>,
    lead_id: i64,
    event_id: &str,
    stage: &str,
    detail: &Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (lead_id, event_id, stage, detail, created_at) VALUES ($1, $2, $3, $4, $5)",
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

fn message_from_row(row: &AnyRow) -> Result<StoredMessage, sqlx::Error> {
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

fn json_column(row: &AnyRow, name: &str) -> Value {
    row.try_get::<String, _>(name)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

#[async_trait]
impl Store for SqlStore {
    async fn lock_lead(&self, identity: &str) -> Result<LeadLock, StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let mut hasher = DefaultHasher::new();
                identity.hash(&mut hasher);
                let stripe = &self.lead_stripes[hasher.finish() as usize % LEAD_STRIPES];
                Ok(LeadLock::new(stripe.clone().lock_owned().await))
            }
            Backend::Postgres => {
                // A transaction-scoped advisory lock: released when the transaction ends,
                // which dropping the guard does (rollback), and which a crashed worker's
                // closed connection does too.
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(identity)
                    .execute(&mut *tx)
                    .await?;
                Ok(LeadLock::new(tx))
            }
        }
    }

    async fn enrich(&self, event: &LeadEvent) -> Result<Enriched, StoreError> {
        let lead = &event.lead;
        let now = now_ms();
        let (_writer, mut tx) = self.begin().await?;
        let lead_id: i64 = sqlx::query_scalar(
            "INSERT INTO leads (email_normalized, email, first_name, last_name, company, job_title,
                 phone, phone_raw, country, consent_email, consent_sms, profile, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (email_normalized) DO UPDATE SET
                 email = excluded.email,
                 first_name = COALESCE(excluded.first_name, leads.first_name),
                 last_name = COALESCE(excluded.last_name, leads.last_name),
                 company = COALESCE(excluded.company, leads.company),
                 job_title = COALESCE(excluded.job_title, leads.job_title),
                 phone = COALESCE(excluded.phone, leads.phone),
                 phone_raw = COALESCE(excluded.phone_raw, leads.phone_raw),
                 country = COALESCE(excluded.country, leads.country),
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
            "INSERT INTO interactions (lead_id, event_id, kind, source, detail, received_at)
             VALUES ($1, $2, 'form_submitted', $3, $4, $5) ON CONFLICT DO NOTHING",
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
            "SELECT COUNT(*) FROM interactions WHERE lead_id = $1 AND event_id <> $2",
        )
        .bind(lead_id)
        .bind(&event.event_id)
        .fetch_one(&mut *tx)
        .await?;
        let prior_messages_sent: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE lead_id = $1 AND event_id <> $2 AND status = 'sent'",
        )
        .bind(lead_id)
        .bind(&event.event_id)
        .fetch_one(&mut *tx)
        .await?;
        let last_track: Option<String> = sqlx::query_scalar(
            "SELECT track FROM processed WHERE lead_id = $1 AND event_id <> $2
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
        let detail = json!({
            "parts": card.parts,
            "review_flags": card.review_flags,
            "notes": card.notes,
        });
        let inserted = sqlx::query(
            "INSERT INTO scores (lead_id, event_id, score, confidence, tone, reasoning, model,
                                 created_at, detail, prompt_version, raw_answer)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        )
        .bind(lead_id)
        .bind(event_id)
        .bind(i64::from(card.score))
        .bind(card.confidence)
        .bind(&card.suggested_tone)
        .bind(serde_json::to_string(&card.reasoning)?)
        .bind(&card.model)
        .bind(now_ms())
        .bind(detail.to_string())
        .bind(card.prompt_version.clone())
        .bind(card.raw_answer.clone())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            // The raw answer stays in its column; the log keeps the decision.
            let mut logged = card.clone();
            logged.raw_answer = None;
            log_event(&mut tx, lead_id, event_id, "score", &json!(logged)).await?;
        }
        let row = sqlx::query(SCORE_BY_EVENT)
            .bind(event_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        score_from_row(&row)
    }

    async fn score_of(&self, event_id: &str) -> Result<Option<ScoreCard>, StoreError> {
        let row = sqlx::query(SCORE_BY_EVENT)
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(score_from_row).transpose()
    }

    async fn record_llm_calls(
        &self,
        lead_id: i64,
        event_id: &str,
        calls: &[LlmCall],
    ) -> Result<(), StoreError> {
        if calls.is_empty() {
            return Ok(());
        }
        let (_writer, mut tx) = self.begin().await?;
        for call in calls {
            sqlx::query(
                "INSERT INTO llm_calls (lead_id, event_id, purpose, model, prompt_version, status,
                                        input_tokens, output_tokens, cost_usd, latency_ms, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(lead_id)
            .bind(event_id)
            .bind(call.purpose)
            .bind(&call.model)
            .bind(&call.prompt_version)
            .bind(&call.status)
            .bind(call.input_tokens as i64)
            .bind(call.output_tokens as i64)
            .bind(call.cost_usd)
            .bind(call.latency_ms)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn llm_spent_since(&self, since_ms: i64) -> Result<f64, StoreError> {
        let spent: Option<f64> =
            sqlx::query_scalar("SELECT SUM(cost_usd) FROM llm_calls WHERE created_at >= $1")
                .bind(since_ms)
                .fetch_one(&self.pool)
                .await?;
        Ok(spent.unwrap_or(0.0))
    }

    async fn leads_with_emails(
        &self,
        emails: &[String],
        except_lead: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let mut found = Vec::new();
        for email in emails.iter().take(20) {
            let id: Option<i64> =
                sqlx::query_scalar("SELECT id FROM leads WHERE email_normalized = $1 AND id <> $2")
                    .bind(email)
                    .bind(except_lead)
                    .fetch_optional(&self.pool)
                    .await?;
            found.extend(id);
        }
        Ok(found)
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
                "INSERT INTO messages (lead_id, event_id, idempotency_key, channel, track,
                     template, recipient, subject, body, status, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
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
                "INSERT INTO review_tasks (lead_id, event_id, title, reasons, created_at)
                 VALUES ($1, $2, 'AI draft to review', $3, $4) ON CONFLICT DO NOTHING",
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
            "SELECT COUNT(*) FROM events WHERE event_id = $1 AND stage = 'route'",
        )
        .bind(&decision.event_id)
        .fetch_one(&mut *tx)
        .await?;
        if logged == 0 || inserted > 0 {
            for (stage, detail) in &decision.log {
                log_event(&mut tx, decision.lead_id, &decision.event_id, stage, detail).await?;
            }
        }
        let rows = sqlx::query("SELECT * FROM messages WHERE event_id = $1 ORDER BY id")
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
            "INSERT INTO processed (event_id, lead_id, track, outcome, latency_ms, processed_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
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
            sqlx::query("UPDATE messages SET status = 'sent', sent_at = $1 WHERE event_id = $2 AND status = 'pending'")
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
                "SELECT latency_ms FROM processed ORDER BY latency_ms LIMIT 1 OFFSET $1",
            )
            .bind(offset)
            .fetch_optional(&self.pool)
        };
        let p50 = latency_at(percentile(0.50)).await?.unwrap_or(0);
        let p99 = latency_at(percentile(0.99)).await?.unwrap_or(0);
        let reasons: Vec<(String,)> = sqlx::query_as(match self.backend {
            Backend::Sqlite => "SELECT value FROM review_tasks, json_each(review_tasks.reasons)",
            Backend::Postgres => {
                "SELECT jsonb_array_elements_text(reasons::jsonb) FROM review_tasks"
            }
        })
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
            llm: self.llm_stats().await?,
        })
    }

    async fn event_status(&self, event_id: &str) -> Result<Option<EventStatus>, StoreError> {
        let row = sqlx::query(
            "SELECT i.lead_id, p.track, p.outcome FROM interactions i
             LEFT JOIN processed p ON p.event_id = i.event_id WHERE i.event_id = $1",
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
        let calls = sqlx::query("SELECT * FROM llm_calls WHERE lead_id = $1 ORDER BY id")
            .bind(lead_id)
            .fetch_all(&self.pool)
            .await?;
        let llm_calls = calls
            .iter()
            .map(|r| {
                json!({
                    "event_id": r.try_get::<String, _>("event_id").unwrap_or_default(),
                    "purpose": r.try_get::<String, _>("purpose").unwrap_or_default(),
                    "model": r.try_get::<String, _>("model").unwrap_or_default(),
                    "prompt_version": r.try_get::<String, _>("prompt_version").unwrap_or_default(),
                    "status": r.try_get::<String, _>("status").unwrap_or_default(),
                    "input_tokens": r.try_get::<i64, _>("input_tokens").unwrap_or_default(),
                    "output_tokens": r.try_get::<i64, _>("output_tokens").unwrap_or_default(),
                    "cost_usd": r.try_get::<f64, _>("cost_usd").unwrap_or_default(),
                    "latency_ms": r.try_get::<i64, _>("latency_ms").unwrap_or_default(),
                })
            })
            .collect();
        let Some(lead) = sqlx::query("SELECT email, profile FROM leads WHERE id = $1")
            .bind(lead_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let rows = |sql: &'static str| sqlx::query(sql).bind(lead_id).fetch_all(&self.pool);
        let interactions =
            rows("SELECT * FROM interactions WHERE lead_id = $1 ORDER BY id").await?;
        let scores = rows("SELECT * FROM scores WHERE lead_id = $1 ORDER BY id").await?;
        let messages = rows("SELECT * FROM messages WHERE lead_id = $1 ORDER BY id").await?;
        let tasks = rows("SELECT * FROM review_tasks WHERE lead_id = $1 ORDER BY id").await?;
        let events = rows("SELECT * FROM events WHERE lead_id = $1 ORDER BY id").await?;

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
                        "detail": json_column(r, "detail"),
                        "prompt_version": r.try_get::<Option<String>, _>("prompt_version").unwrap_or_default(),
                        "raw_answer": r.try_get::<Option<String>, _>("raw_answer").unwrap_or_default(),
                    })
                })
                .collect(),
            messages: messages
                .iter()
                .map(message_from_row)
                .collect::<Result<_, _>>()?,
            llm_calls,
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

const SCORE_BY_EVENT: &str = "SELECT score, confidence, tone, reasoning, model, detail, prompt_version, raw_answer FROM scores WHERE event_id = $1";

fn score_from_row(row: &AnyRow) -> Result<ScoreCard, StoreError> {
    let score = Score::new(row.try_get("score")?).map_err(|e| StoreError(e.to_string()))?;
    let detail: Value = serde_json::from_str(&row.try_get::<String, _>("detail")?)?;
    let texts = |key: &str| -> Vec<String> {
        detail
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut card = ScoreCard::plain(
        score,
        serde_json::from_str(&row.try_get::<String, _>("reasoning")?)?,
        row.try_get("tone")?,
        row.try_get("confidence")?,
        row.try_get("model")?,
    );
    card.review_flags = texts("review_flags");
    card.notes = texts("notes");
    card.parts = detail.get("parts").cloned().unwrap_or(Value::Null);
    card.prompt_version = row.try_get("prompt_version")?;
    card.raw_answer = row.try_get("raw_answer")?;
    Ok(card)
}

impl SqlStore {
    async fn llm_stats(&self) -> Result<LlmStats, StoreError> {
        let by_model: Vec<(String, i64, i64, i64, f64)> = sqlx::query_as(
            "SELECT model, COUNT(*), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT),
                    SUM(cost_usd)
             FROM llm_calls GROUP BY model",
        )
        .fetch_all(&self.pool)
        .await?;
        let by_status: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM llm_calls GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        let leads: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT lead_id) FROM llm_calls")
            .fetch_one(&self.pool)
            .await?;
        let today = now_ms().div_euclid(86_400_000) * 86_400_000;
        let mut stats = LlmStats {
            cost_today_usd: self.llm_spent_since(today).await?,
            leads: leads as u64,
            by_status: by_status.into_iter().map(|(k, v)| (k, v as u64)).collect(),
            ..LlmStats::default()
        };
        for (model, calls, input, output, cost) in by_model {
            stats.calls += calls as u64;
            stats.input_tokens += input as u64;
            stats.output_tokens += output as u64;
            stats.cost_usd += cost;
            stats.by_model.insert(
                model,
                ModelUsage {
                    calls: calls as u64,
                    input_tokens: input as u64,
                    output_tokens: output as u64,
                    cost_usd: cost,
                },
            );
        }
        if leads > 0 {
            stats.cost_per_lead_usd = stats.cost_usd / leads as f64;
        }
        Ok(stats)
    }
}
