//! LLM writing and judging. The template's draft is the reference: the model rewrites its
//! subject and body (and the SMS) for the lead, the tone and the score's reasons; the
//! unsubscribe footer and the SMS opt-out are the template's own, appended by us, never
//! written by the model. Recipients are never the model's: they come from the lead record.
//! Any failure keeps the template's draft, which the marketing team approved.
//!
//! The judge is an optional second model that reads the final drafts against the written
//! compliance rules and says pass or fail; a fail, or no verdict, holds the drafts.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::ai::answer::find_object;
use crate::ai::client::{CallError, LlmCall, LlmClient, Purpose};
use crate::ai::prompts::{Prompts, data_json, lead_json, redact_contacts};
use crate::ai::provider::{ChatRequest, OutputSchema};
use crate::ai::scoring::plain_text;
use crate::config::Settings;
use crate::pipeline::compose::{ComposeInput, is_invisible};
use crate::pipeline::{Channel, Draft};
use crate::telemetry;

/// Drafts after the writer, and what it cost.
#[derive(Debug, Clone)]
pub struct Written {
    /// The drafts to check: rewritten, or the templates' when the model failed.
    pub drafts: Vec<Draft>,
    /// Calls made.
    pub calls: Vec<LlmCall>,
    /// `None` when the model wrote them; the fallback reason otherwise.
    pub fallback: Option<&'static str>,
    /// Prompt version used.
    pub prompt_version: Option<String>,
}

/// The judge's verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The drafts follow the rules.
    Pass,
    /// They do not; the judge's reasons.
    Fail(Vec<String>),
    /// No usable verdict (the call failed or the answer was malformed).
    Unavailable(&'static str),
}

/// Writes and judges drafts with the configured models.
pub struct Writer {
    client: Arc<LlmClient>,
    prompts: Arc<Prompts>,
    settings: Settings,
}

impl Writer {
    /// A writer over the shared client.
    pub fn new(client: Arc<LlmClient>, prompts: Arc<Prompts>, settings: &Settings) -> Self {
        Self {
            client,
            prompts,
            settings: settings.clone(),
        }
    }

    /// Whether drafts should be rewritten at all (`llm.write`).
    pub fn writes(&self) -> bool {
        self.settings.llm.write
    }

    /// Whether a judge model is configured.
    pub fn judges(&self) -> bool {
        self.settings.llm.judge_model.is_some()
    }

    /// Rewrites the email and SMS drafts of `templates`; the Slack alert stays as it is.
    pub async fn rewrite(&self, input: &ComposeInput<'_>, templates: Vec<Draft>) -> Written {
        let mut calls = Vec::new();
        let email = templates.iter().find(|d| d.channel == Channel::Email);
        let sms = templates.iter().find(|d| d.channel == Channel::Sms);
        let Some(email) = email else {
            return Written {
                drafts: templates,
                calls,
                fallback: None,
                prompt_version: None,
            };
        };
        let (reference_body, footer) = split_footer(&email.body);
        let (reference_sms, sms_footer) =
            sms.map(|d| split_sms_footer(&d.body)).unwrap_or_default();
        let s = &self.settings;
        let ctx = json!({
            "company_name": s.compose.company_name,
            "product_name": s.compose.product_name,
            "max_email_chars": s.guard.max_email_chars.saturating_sub(footer.chars().count() + 2),
            "max_sms_chars": s.guard.max_sms_chars,
            "track": input.track.as_str(),
            "tone": input.card.suggested_tone,
            "returning": input.is_returning,
            // The built-in reasons quote lead fields: they get the same redaction.
            "reasoning": input.card.reasoning.iter().map(|r| redact_contacts(r)).collect::<Vec<_>>(),
            "lead_json": lead_json(input.lead, s.llm.max_lead_text_chars, true),
            "reference_subject": email.subject.clone().unwrap_or_default(),
            "reference_body": reference_body,
            "reference_sms": reference_sms,
        });
        let keep = |reason: &'static str, calls: Vec<LlmCall>, version: Option<String>| {
            telemetry::llm_fallback("write", reason);
            Written {
                drafts: templates.clone(),
                calls,
                fallback: Some(reason),
                prompt_version: version,
            }
        };
        let prompt = match self.prompts.render("write", &ctx) {
            Ok(p) => p,
            Err(_) => return keep("prompt_error", calls, None),
        };
        let request = ChatRequest::structured(
            s.llm.model.clone(),
            prompt.system,
            prompt.user,
            OutputSchema {
                name: "lead_message".into(),
                schema: message_schema(),
            },
            s.llm.max_output_tokens,
            0.4,
        );
        let version = Some(prompt.version.clone());
        let reply = match self
            .client
            .call(Purpose::Write, &prompt.version, &request, &mut calls)
            .await
        {
            Ok(reply) => reply,
            Err(e) => return keep(e.kind(), calls, version),
        };
        let Some(answer) = find_object(&reply.text) else {
            mark_invalid(&mut calls);
            return keep("invalid_answer", calls, version);
        };
        let text = |key: &str| answer.get(key).and_then(Value::as_str).map(str::trim);
        let (Some(subject), Some(body)) = (text("subject"), text("body")) else {
            mark_invalid(&mut calls);
            return keep("invalid_answer", calls, version);
        };
        if subject.is_empty()
            || body.is_empty()
            || (sms.is_some() && text("sms").is_none_or(str::is_empty))
        {
            mark_invalid(&mut calls);
            return keep("invalid_answer", calls, version);
        }
        let track = input.track.as_str();
        let drafts = templates
            .iter()
            .map(|d| match d.channel {
                Channel::Email => Draft {
                    template: format!("llm:{track}/email"),
                    subject: Some(plain_text(subject, 300)),
                    body: format!("{}\n\n{footer}", normalise_body(body)),
                    ..d.clone()
                },
                Channel::Sms => Draft {
                    template: format!("llm:{track}/sms"),
                    body: join_sms(
                        &plain_text(text("sms").unwrap_or_default(), 2000),
                        &sms_footer,
                    ),
                    ..d.clone()
                },
                Channel::Slack => d.clone(),
            })
            .collect();
        Written {
            drafts,
            calls,
            fallback: None,
            prompt_version: version,
        }
    }

    /// Asks the judge model about the marketing drafts.
    pub async fn judge(&self, drafts: &[Draft], calls: &mut Vec<LlmCall>) -> Verdict {
        let Some(model) = self.settings.llm.judge_model.clone() else {
            return Verdict::Pass;
        };
        let shown: Vec<Value> = drafts
            .iter()
            .filter(|d| d.is_marketing())
            .map(|d| json!({ "channel": d.channel.as_str(), "subject": d.subject, "body": d.body }))
            .collect();
        if shown.is_empty() {
            return Verdict::Pass;
        }
        let ctx = json!({
            "company_name": self.settings.compose.company_name,
            "drafts_json": data_json(&Value::Array(shown)),
        });
        let Ok(prompt) = self.prompts.render("judge", &ctx) else {
            return Verdict::Unavailable("prompt_error");
        };
        let request = ChatRequest::structured(
            model,
            prompt.system,
            prompt.user,
            OutputSchema {
                name: "draft_verdict".into(),
                schema: verdict_schema(),
            },
            300,
            0.0,
        );
        let reply = match self
            .client
            .call(Purpose::Judge, &prompt.version, &request, calls)
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                telemetry::llm_fallback("judge", e.kind());
                return Verdict::Unavailable(call_kind(&e));
            }
        };
        let parsed = find_object(&reply.text).and_then(|o| {
            let verdict = o.get("verdict")?.as_str()?.trim().to_lowercase();
            let reasons: Vec<String> = o
                .get("reasons")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .take(5)
                        .map(|r| plain_text(r, 200))
                        .collect()
                })
                .unwrap_or_default();
            match verdict.as_str() {
                "pass" => Some(Verdict::Pass),
                "fail" => Some(Verdict::Fail(reasons)),
                _ => None,
            }
        });
        parsed.unwrap_or_else(|| {
            mark_invalid(calls);
            Verdict::Unavailable("invalid_answer")
        })
    }
}

fn call_kind(e: &CallError) -> &'static str {
    e.kind()
}

fn mark_invalid(calls: &mut [LlmCall]) {
    if let Some(call) = calls.last_mut() {
        call.status = "invalid_answer".into();
    }
}

/// Splits an email body before its last paragraph that mentions unsubscribing: that
/// paragraph and what follows are the footer the model must not touch.
pub fn split_footer(body: &str) -> (String, String) {
    let paragraphs: Vec<&str> = body.split("\n\n").collect();
    match paragraphs
        .iter()
        .rposition(|p| p.to_lowercase().contains("unsubscribe"))
    {
        Some(i) if i > 0 => (
            paragraphs[..i].join("\n\n").trim().to_owned(),
            paragraphs[i..].join("\n\n").trim().to_owned(),
        ),
        _ => (body.trim().to_owned(), String::new()),
    }
}

/// Splits an SMS before its opt-out sentence (`Reply STOP …`).
fn split_sms_footer(text: &str) -> (String, String) {
    match text.find("Reply STOP") {
        Some(i) => (text[..i].trim().to_owned(), text[i..].trim().to_owned()),
        None => (text.trim().to_owned(), String::new()),
    }
}

fn join_sms(text: &str, footer: &str) -> String {
    if footer.is_empty() {
        text.to_owned()
    } else {
        format!("{text} {footer}")
    }
}

/// The model's body with control characters other than newlines removed and runs of blank
/// lines collapsed.
fn normalise_body(body: &str) -> String {
    let cleaned: String = body
        .replace("\r\n", "\n")
        .chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .filter(|c| !is_invisible(*c))
        .collect();
    let mut out = String::new();
    let mut blank = 0;
    for line in cleaned.lines() {
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.trim().to_owned()
}

fn message_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "subject": { "type": "string" },
            "body": { "type": "string" },
            "sms": { "type": "string" }
        },
        "required": ["subject", "body", "sms"],
        "additionalProperties": false
    })
}

fn verdict_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "verdict": { "type": "string", "enum": ["pass", "fail"] },
            "reasons": { "type": "array", "items": { "type": "string" } }
        },
        "required": ["verdict", "reasons"],
        "additionalProperties": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_footer_is_the_unsubscribe_paragraph_and_after() {
        let body = "Hello,\n\nText.\n\nBest regards,\nThe team\n\nYou receive this email because you asked.\nUnsubscribe: https://example.com/u/1";
        let (main, footer) = split_footer(body);
        assert_eq!(main, "Hello,\n\nText.\n\nBest regards,\nThe team");
        assert_eq!(
            footer,
            "You receive this email because you asked.\nUnsubscribe: https://example.com/u/1"
        );
    }

    #[test]
    fn sms_opt_out_is_kept_apart() {
        let (main, footer) = split_sms_footer("Acme: hi. Book: https://x Reply STOP to opt out.");
        assert_eq!(main, "Acme: hi. Book: https://x");
        assert_eq!(footer, "Reply STOP to opt out.");
    }

    #[test]
    fn bodies_lose_control_characters_and_extra_blank_lines() {
        assert_eq!(
            normalise_body("Hi\u{202E}\r\n\r\n\r\n\u{7}there  \n"),
            "Hi\n\nthere"
        );
    }
}
