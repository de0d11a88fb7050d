//! Compose: writes each channel's draft from `templates/<track>/<channel>.txt` (MiniJinja).
//! Templates are compiled into the binary; `compose.templates_dir` lets a marketer replace any
//! of them with a file of the same path, read at start-up.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior, context};
use serde::Serialize;

use crate::ai::ScoreCard;
use crate::config::ComposeSettings;
use crate::lead::Lead;
use crate::pipeline::{Channel, Track};

/// Templates shipped in the binary, by path under `templates/`.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "drip/email.txt",
        include_str!("../../templates/drip/email.txt"),
    ),
    (
        "active/email.txt",
        include_str!("../../templates/active/email.txt"),
    ),
    (
        "hot/email.txt",
        include_str!("../../templates/hot/email.txt"),
    ),
    ("hot/sms.txt", include_str!("../../templates/hot/sms.txt")),
    (
        "hot/slack.txt",
        include_str!("../../templates/hot/slack.txt"),
    ),
    (
        "case_studies/banking.txt",
        include_str!("../../templates/case_studies/banking.txt"),
    ),
    (
        "case_studies/fintech.txt",
        include_str!("../../templates/case_studies/fintech.txt"),
    ),
    (
        "case_studies/software.txt",
        include_str!("../../templates/case_studies/software.txt"),
    ),
    (
        "case_studies/education.txt",
        include_str!("../../templates/case_studies/education.txt"),
    ),
    (
        "case_studies/generic.txt",
        include_str!("../../templates/case_studies/generic.txt"),
    ),
];

/// One message as written, before any check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Draft {
    /// Where it goes.
    pub channel: Channel,
    /// The template that wrote it.
    pub template: String,
    /// Address (punycode domain), E.164 number or Slack channel.
    pub recipient: String,
    /// Email subject; `None` for SMS and Slack.
    pub subject: Option<String>,
    /// The text.
    pub body: String,
}

impl Draft {
    /// Marketing messages go to the lead and need consent and an unsubscribe line; the
    /// Slack alert goes to the sales team.
    pub fn is_marketing(&self) -> bool {
        self.channel != Channel::Slack
    }
}

/// A template could not be rendered; the lead goes to review instead of failing.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template '{template}' failed: {reason}")]
pub struct ComposeError {
    /// Which template.
    pub template: String,
    /// What MiniJinja said.
    pub reason: String,
}

/// What the composer needs to know about the lead beyond the lead itself.
#[derive(Debug, Clone)]
pub struct ComposeInput<'a> {
    /// The lead's row id.
    pub lead_id: i64,
    /// The lead.
    pub lead: &'a Lead,
    /// Its score.
    pub card: &'a ScoreCard,
    /// Its track.
    pub track: Track,
    /// Seen before through another delivery.
    pub is_returning: bool,
}

/// Renders drafts from the templates.
pub struct Composer {
    env: Environment<'static>,
    settings: ComposeSettings,
}

impl Composer {
    /// Loads templates: files under `templates_dir` replace built-in ones of the same path.
    pub fn new(settings: ComposeSettings) -> Result<Self, ComposeError> {
        let mut sources: BTreeMap<String, String> = BUILT_IN
            .iter()
            .map(|(name, text)| (name.to_string(), text.to_string()))
            .collect();
        if let Some(dir) = &settings.templates_dir {
            read_overrides(dir, dir, &mut sources)?;
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, text) in sources {
            env.add_template_owned(name.clone(), text)
                .map_err(|e| ComposeError {
                    template: name,
                    reason: e.to_string(),
                })?;
        }
        Ok(Self { env, settings })
    }

    /// Writes one draft per channel.
    pub fn compose(
        &self,
        input: &ComposeInput<'_>,
        channels: &[Channel],
    ) -> Result<Vec<Draft>, ComposeError> {
        let sector = self.sector_of(input.lead);
        let case_study = self
            .render(&format!("case_studies/{sector}.txt"), context! {})
            .or_else(|_| self.render("case_studies/generic.txt", context! {}))?;
        let ctx = self.context(input, &sector, case_study.trim());
        channels
            .iter()
            .map(|channel| self.draft(input, *channel, &ctx))
            .collect()
    }

    fn draft(
        &self,
        input: &ComposeInput<'_>,
        channel: Channel,
        ctx: &minijinja::Value,
    ) -> Result<Draft, ComposeError> {
        let template = format!("{}/{}.txt", input.track.as_str(), channel.as_str());
        let text = self.render(&template, ctx.clone())?;
        let (subject, body) = match channel {
            Channel::Email => split_subject(&text),
            _ => (None, text.trim().to_owned()),
        };
        let recipient = match channel {
            Channel::Email => input.lead.email.transport(),
            Channel::Sms => input
                .lead
                .phone
                .as_ref()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            Channel::Slack => self.settings.sales_slack_channel.clone(),
        };
        Ok(Draft {
            channel,
            template,
            recipient,
            subject,
            body,
        })
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, ComposeError> {
        let fail = |e: minijinja::Error| ComposeError {
            template: name.to_owned(),
            reason: e.to_string(),
        };
        self.env
            .get_template(name)
            .map_err(fail)?
            .render(ctx)
            .map_err(fail)
    }

    fn context(
        &self,
        input: &ComposeInput<'_>,
        sector: &str,
        case_study: &str,
    ) -> minijinja::Value {
        let lead = input.lead;
        let s = &self.settings;
        let full_name = [lead.first_name.as_deref(), lead.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        context! {
            lead_id => input.lead_id,
            greeting_name => lead.greeting_name().map(plain),
            full_name => plain(&full_name),
            company => lead.company.as_deref().map(plain),
            job_title => lead.job_title.as_deref().map(plain),
            returning => input.is_returning,
            track => input.track.as_str(),
            score => input.card.score.value(),
            tone => &input.card.suggested_tone,
            reasoning => &input.card.reasoning,
            sector => sector,
            sector_label => if sector == "generic" { "B2B" } else { sector },
            case_study => case_study,
            product_name => &s.product_name,
            company_name => &s.company_name,
            demo_url => &s.demo_url,
            resources_url => &s.resources_url,
            unsubscribe_url => s.unsubscribe_url.replace("{lead_id}", &input.lead_id.to_string()),
        }
    }

    /// The first sector slug one of whose words appears in the lead's sector, specialisation,
    /// company or job title; `generic` when none does.
    fn sector_of(&self, lead: &Lead) -> String {
        let text = ["sector", "specialization", "industry"]
            .iter()
            .filter_map(|k| lead.answer_text(k))
            .chain(lead.company.clone())
            .chain(lead.job_title.clone())
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let tokens: Vec<&str> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .collect();
        self.settings
            .sectors
            .iter()
            .find(|(_, words)| {
                words
                    .iter()
                    .any(|w| tokens.contains(&w.to_lowercase().as_str()))
            })
            .map(|(slug, _)| slug.clone())
            .unwrap_or_else(|| "generic".into())
    }
}

/// The lead's own text without control characters, bidirectional overrides or zero-width
/// characters, which could garble or disguise a Slack alert or an SMS.
fn plain(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() && !is_invisible(*c))
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Zero-width characters and bidirectional overrides: text that can disguise what a reader
/// sees. Used for lead text here and for model text in `ai::writer` and `ai::scoring`.
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Splits `Subject: …` off the first line of an email template's output.
fn split_subject(text: &str) -> (Option<String>, String) {
    let text = text.trim_start();
    match text.split_once('\n') {
        Some((first, rest)) if first.starts_with("Subject:") => {
            let subject = first.trim_start_matches("Subject:").trim().to_owned();
            (Some(subject), rest.trim().to_owned())
        }
        _ => (None, text.trim().to_owned()),
    }
}

fn read_overrides(
    root: &Path,
    dir: &Path,
    sources: &mut BTreeMap<String, String>,
) -> Result<(), ComposeError> {
    let fail = |e: std::io::Error| ComposeError {
        template: dir.display().to_string(),
        reason: e.to_string(),
    };
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        if path.is_dir() {
            read_overrides(root, &path, sources)?;
        } else if path.extension().is_some_and(|e| e == "txt") {
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            sources.insert(name, std::fs::read_to_string(&path).map_err(fail)?);
        }
    }
    Ok(())
}
