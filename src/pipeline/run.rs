//! Sequences the stages for one delivery. Each stage's decision is stored; the order of
//! writes (decision with idempotency keys, then delivery, then the processed mark) is what
//! makes a redelivered lead harmless.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tracing::{info, instrument};

use crate::ai::client::LlmClient;
use crate::ai::prompts::Prompts;
use crate::ai::scoring::ScoringEngine;
use crate::ai::writer::{Verdict, Writer};
use crate::channels::{ChannelError, Deliverer};
use crate::config::Settings;
use crate::lead::LeadEvent;
use crate::pipeline::compose::ComposeInput;
use crate::pipeline::guard::{Contacts, emails_in};
use crate::pipeline::{
    Composer, Draft, Guard, Handler, Hit, Outcome, Track, act, enrich, route, score,
};
use crate::queue::embedded::now_ms;
use crate::store::{Decision, Processed, Store, StoreError};

/// How a stage failed, which decides what the worker does with the delivery.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Try again later with backoff (store or channel unavailable).
    #[error("{0}")]
    Retry(String),
    /// Try again no sooner than this (a rate-limited provider said when).
    #[error("{0}")]
    RetryAfter(String, std::time::Duration),
    /// Can never succeed (unparseable message): dead-letter it now.
    #[error("{0}")]
    Permanent(String),
}

impl From<StoreError> for StageError {
    fn from(e: StoreError) -> Self {
        StageError::Retry(e.to_string())
    }
}

impl From<ChannelError> for StageError {
    fn from(e: ChannelError) -> Self {
        StageError::Retry(e.to_string())
    }
}

/// What handling one delivery produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The lead.
    pub lead_id: i64,
    /// Its track.
    pub track: Track,
    /// What happened.
    pub outcome: Outcome,
    /// Names of the guard rules that blocked drafts.
    pub blocked_by: Vec<&'static str>,
    /// From acceptance to the end of the act stage.
    pub latency_ms: i64,
    /// `false` when an earlier attempt had already finished this delivery.
    pub is_first_finish: bool,
}

/// The stages and what they need.
pub struct Pipeline {
    /// The CRM.
    pub store: Arc<dyn Store>,
    /// Scores leads (built-in, LLM or blend).
    pub scoring: ScoringEngine,
    /// Rewrites and judges drafts with the LLM, when one is configured.
    pub writer: Option<Writer>,
    /// Writes drafts from the templates.
    pub composer: Composer,
    /// Checks drafts.
    pub guard: Guard,
    /// Delivers messages.
    pub deliverer: Arc<dyn Deliverer>,
    /// Routing bands and the confidence threshold.
    pub settings: Settings,
}

impl Pipeline {
    /// Assembles the stages for `settings`; `llm` is the process's shared client when a
    /// provider is configured (see `ai::client::connect`).
    pub fn new(
        settings: &Settings,
        store: Arc<dyn Store>,
        deliverer: Arc<dyn Deliverer>,
        llm: Option<Arc<LlmClient>>,
    ) -> anyhow::Result<Self> {
        let prompts = Arc::new(
            Prompts::new(settings.llm.prompts_dir.as_deref()).map_err(anyhow::Error::msg)?,
        );
        let guard = Guard::new(settings.guard.clone())
            .map_err(|e| anyhow::anyhow!("invalid guard pattern: {e}"))?
            .protect(&prompts.system_sentences());
        Ok(Self {
            store,
            scoring: ScoringEngine::new(settings, llm.clone(), prompts.clone()),
            writer: llm.map(|client| Writer::new(client, prompts, settings)),
            composer: Composer::new(settings.compose.clone())?,
            guard,
            deliverer,
            settings: settings.clone(),
        })
    }

    /// Runs every stage for one queued lead. `is_last_attempt`: no retry follows, so a
    /// rate-limited LLM falls back instead of asking for one.
    #[instrument(skip_all, fields(event_id = %event.event_id))]
    pub async fn handle_event(
        &self,
        event: &LeadEvent,
        is_last_attempt: bool,
    ) -> Result<Handled, StageError> {
        let store = self.store.as_ref();
        // Two events of one person never run at once (in any process): they would race on
        // `is_returning` and history. Held until this function returns.
        let _lead_lock = store.lock_lead(&event.lead.email.normalized()).await?;
        let enriched = enrich::enrich(store, event).await?;
        let lead_id = enriched.lead_id;
        let card = score::score(&self.scoring, store, &enriched, event, is_last_attempt).await?;
        let route = route::route(card.score, &self.settings.route);
        let plan = act::plan(&route, &event.lead);

        let input = ComposeInput {
            lead_id,
            lead: &event.lead,
            card: &card,
            track: route.track,
            is_returning: enriched.is_returning,
        };
        let (mut drafts, compose_error) = match self.composer.compose(&input, &plan.channels) {
            Ok(drafts) => (drafts, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let mut writer_log = json!(null);
        let mut calls = Vec::new();
        let mut written_by_llm = false;
        if let Some(writer) = self.writer.as_ref().filter(|w| w.writes())
            && drafts.iter().any(|d| d.is_marketing())
        {
            let written = writer.rewrite(&input, drafts).await;
            writer_log = json!({ "fallback": written.fallback,
                                 "prompt_version": written.prompt_version });
            written_by_llm = written.fallback.is_none();
            calls.extend(written.calls);
            drafts = written.drafts;
        }

        let mut hits = self.guard.check_with(&drafts, &self.contacts(event));
        hits.extend(self.other_leads_named(&drafts, lead_id).await?);
        let mut reasons = act::review_reasons(&hits, &card, self.settings.act.min_confidence);
        if let Some(e) = &compose_error {
            reasons.push(format!("template_error: {e}"));
        }
        // The judge reads only what a model wrote, and only when nothing else holds it.
        let mut verdict_log = json!(null);
        if let Some(writer) = self.writer.as_ref().filter(|w| w.judges())
            && written_by_llm
            && reasons.is_empty()
            && !plan.is_suppressed
        {
            match writer.judge(&drafts, &mut calls).await {
                Verdict::Pass => verdict_log = json!({ "verdict": "pass" }),
                Verdict::Fail(why) => {
                    reasons.push(format!("judge_failed: {}", why.join("; ")));
                    verdict_log = json!({ "verdict": "fail", "reasons": why });
                }
                Verdict::Unavailable(kind) => {
                    reasons.push(format!("judge_unavailable: {kind}"));
                    verdict_log = json!({ "verdict": null, "unavailable": kind });
                }
            }
        }
        store
            .record_llm_calls(lead_id, &event.event_id, &calls)
            .await?;
        let outcome = match (plan.is_suppressed, reasons.is_empty()) {
            (true, _) => Outcome::Suppressed,
            (false, false) => Outcome::Review,
            (false, true) => Outcome::Sent,
        };
        if outcome != Outcome::Review {
            reasons.clear();
        }

        let decision = Decision {
            lead_id,
            event_id: event.event_id.clone(),
            track: route.track,
            outcome,
            messages: act::outgoing(&event.event_id, &drafts),
            review_reasons: reasons,
            log: vec![
                ("route", json!({ "track": route.track, "plan": plan })),
                (
                    "compose",
                    json!({ "templates": drafts.iter().map(|d| &d.template).collect::<Vec<_>>(),
                            "error": compose_error.map(|e| e.to_string()),
                            "writer": writer_log }),
                ),
                (
                    "guard",
                    json!({ "rules": act::guard_log(&hits), "judge": verdict_log }),
                ),
            ],
        };
        let stored = self.store.record_decision(&decision).await?;
        // On a redelivery the stored messages are the earlier attempt's; they, not this
        // attempt's recomputation, say whether the lead was held or is being sent.
        let outcome = match stored.first().map(|m| m.status.as_str()) {
            Some("review") => Outcome::Review,
            Some(_) => Outcome::Sent,
            None => outcome,
        };
        if outcome == Outcome::Sent {
            let name = display_name(event);
            for message in stored.iter().filter(|m| m.status == "pending") {
                self.deliverer.deliver(message, name.as_deref()).await?;
            }
        }

        let latency_ms = (now_ms() - event.received_at_ms).max(0);
        let processed = Processed {
            event_id: event.event_id.clone(),
            lead_id,
            track: route.track,
            outcome,
            latency_ms,
        };
        let is_first_finish = self.store.finish(&processed).await?;
        info!(
            lead_id,
            track = route.track.as_str(),
            outcome = outcome.as_str(),
            "LeadProcessed"
        );
        Ok(Handled {
            lead_id,
            track: route.track,
            outcome,
            blocked_by: hits.iter().map(|h| h.rule).collect(),
            latency_ms,
            is_first_finish,
        })
    }

    /// The addresses a draft may name: the sender's and the lead's own.
    fn contacts(&self, event: &LeadEvent) -> Contacts {
        let sender = self
            .settings
            .compose
            .email_from
            .parse::<lettre::message::Mailbox>()
            .map(|m| m.email.to_string().to_lowercase())
            .ok();
        let lead = &event.lead;
        Contacts {
            emails: sender
                .into_iter()
                .chain([
                    lead.email.normalized(),
                    lead.email.transport().to_lowercase(),
                ])
                .collect(),
            phones: lead
                .phone
                .iter()
                .map(|p| p.as_str().chars().filter(char::is_ascii_digit).collect())
                .collect(),
        }
    }

    /// A hit for each draft that names an email address the CRM holds for another lead.
    async fn other_leads_named(
        &self,
        drafts: &[Draft],
        lead_id: i64,
    ) -> Result<Vec<Hit>, StageError> {
        let emails = emails_in(drafts);
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        let others = self.store.leads_with_emails(&emails, lead_id).await?;
        Ok(others
            .iter()
            .take(1)
            .map(|other| Hit {
                rule: "other_lead_data",
                channel: drafts
                    .first()
                    .map_or(crate::pipeline::Channel::Email, |d| d.channel),
                detail: format!("names the address of lead {other}"),
            })
            .collect())
    }
}

fn display_name(event: &LeadEvent) -> Option<String> {
    let lead = &event.lead;
    let parts: Vec<&str> = [lead.first_name.as_deref(), lead.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

#[async_trait]
impl Handler for Pipeline {
    async fn handle(
        &self,
        payload: &[u8],
        _attempt: u32,
        is_last: bool,
    ) -> Result<Handled, StageError> {
        // The reason names the kind and place of the error, not serde's text: that quotes the
        // offending value, which could be an email address, into logs and dead letters.
        let event: LeadEvent = serde_json::from_slice(payload).map_err(|e| {
            let at = format!("line {} column {}", e.line(), e.column());
            StageError::Permanent(format!(
                "unparseable queue message: {:?} error at {at}",
                e.classify()
            ))
        })?;
        self.handle_event(&event, is_last).await
    }
}
