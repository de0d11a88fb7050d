//! Act: decide between sending, holding for review and suppressing; store the decision with
//! each message's idempotency key; only then deliver.

use serde::Serialize;
use serde_json::json;

use crate::ai::ScoreCard;
use crate::lead::Lead;
use crate::pipeline::{Channel, Draft, Hit, Route};
use crate::store::OutgoingMessage;

/// What happened to a lead's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every message was delivered.
    Sent,
    /// The drafts wait for a human in an "AI draft to review" task.
    Review,
    /// No marketing consent: nothing is written or sent.
    Suppressed,
}

impl Outcome {
    /// The lowercase name used in storage and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Review => "review",
            Outcome::Suppressed => "suppressed",
        }
    }
}

/// The channels a lead may actually be reached on, and why the others were dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Usable channels; empty when the lead is suppressed.
    pub channels: Vec<Channel>,
    /// Channels of the track that were dropped, with the reason.
    pub skipped: Vec<(Channel, &'static str)>,
    /// The lead gave no email marketing consent.
    pub is_suppressed: bool,
}

/// Applies consent and reachability to the track's channels. Without email marketing consent
/// the lead gets nothing at all (the Slack alert needs a lead sales may contact).
pub fn plan(route: &Route, lead: &Lead) -> Plan {
    if !lead.consent.email_marketing {
        let skipped = route
            .channels
            .iter()
            .map(|c| (*c, "no marketing consent"))
            .collect();
        return Plan {
            channels: Vec::new(),
            skipped,
            is_suppressed: true,
        };
    }
    let mut channels = Vec::new();
    let mut skipped = Vec::new();
    for channel in &route.channels {
        match channel {
            Channel::Sms if !lead.consent.sms_marketing => {
                skipped.push((*channel, "no sms consent"))
            }
            Channel::Sms if lead.phone.is_none() => {
                skipped.push((*channel, "no verified phone number"))
            }
            _ => channels.push(*channel),
        }
    }
    Plan {
        channels,
        skipped,
        is_suppressed: false,
    }
}

/// Why drafts must wait for a human; empty means they may go out.
pub fn review_reasons(hits: &[Hit], card: &ScoreCard, min_confidence: f64) -> Vec<String> {
    let mut reasons: Vec<String> = hits.iter().map(Hit::reason).collect();
    reasons.extend(card.review_flags.iter().cloned());
    let confidence = card.confidence;
    if confidence < min_confidence {
        let why = if card.notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", card.notes.join("; "))
        };
        reasons.push(format!(
            "low_confidence: {confidence:.2} is below {min_confidence:.2}{why}"
        ));
    }
    reasons
}

/// Turns drafts into messages keyed `<event_id>-<channel>`: one send per delivery and channel.
pub fn outgoing(event_id: &str, drafts: &[Draft]) -> Vec<OutgoingMessage> {
    drafts
        .iter()
        .map(|d| OutgoingMessage {
            idempotency_key: format!("{event_id}-{}", d.channel.as_str()),
            channel: d.channel,
            template: d.template.clone(),
            recipient: d.recipient.clone(),
            subject: d.subject.clone(),
            body: d.body.clone(),
        })
        .collect()
}

/// The event-log entry of the guard stage.
pub fn guard_log(hits: &[Hit]) -> serde_json::Value {
    json!({ "passed": hits.is_empty(), "hits": hits })
}
