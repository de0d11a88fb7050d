//! The typed settings tree: built-in defaults, then the TOML file, then `NURTURE__…`
//! environment variables (double underscore between levels), then command-line flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Every setting nurture reads. Unknown keys anywhere are an error that names the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Folder for the embedded queue, the SQLite CRM store and the outbox.
    pub data_dir: PathBuf,
    /// `embedded` (SQLite file in the data dir) or `rabbitmq`.
    pub queue: QueueKind,
    /// RabbitMQ address, used when `queue = "rabbitmq"`.
    pub amqp_url: SecretUrl,
    /// CRM database: `sqlite://PATH` or `postgres://…`; unset means `<data_dir>/nurture.db`.
    pub database_url: Option<SecretUrl>,
    /// RabbitMQ topology and consumer settings.
    pub rabbitmq: RabbitSettings,
    /// Webhook intake.
    pub ingest: IngestSettings,
    /// Worker loop: concurrency, leases, retries.
    pub worker: WorkerSettings,
    /// How leads are scored: the built-in points model, an LLM, or a blend.
    pub score: ScoreSettings,
    /// The LLM provider, its limits and its budget.
    pub llm: LlmSettings,
    /// Score bands and the channels of each track.
    pub route: RouteSettings,
    /// Message templates and the facts they quote.
    pub compose: ComposeSettings,
    /// Compliance validators.
    pub guard: GuardSettings,
    /// When a draft may go out without a human.
    pub act: ActSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("nurture-data"),
            queue: QueueKind::Embedded,
            amqp_url: SecretUrl("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            database_url: None,
            rabbitmq: RabbitSettings::default(),
            ingest: IngestSettings::default(),
            worker: WorkerSettings::default(),
            score: ScoreSettings::default(),
            llm: LlmSettings::default(),
            route: RouteSettings::default(),
            compose: ComposeSettings::default(),
            guard: GuardSettings::default(),
            act: ActSettings::default(),
        }
    }
}

/// Which queue carries leads from ingest to the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// SQLite file in the data dir: no broker needed.
    Embedded,
    /// RabbitMQ quorum queues, shared by any number of ingest and worker processes.
    Rabbitmq,
}

/// A URL that may hold a password: `Debug` and `config show` mask it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(pub String);

impl SecretUrl {
    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `****`.
    pub fn masked(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("****"));
                }
                let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
                if pairs
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("password"))
                {
                    let mut query = url.query_pairs_mut();
                    query.clear();
                    for (k, v) in &pairs {
                        let shown = if k.eq_ignore_ascii_case("password") {
                            "****"
                        } else {
                            v
                        };
                        query.append_pair(k, shown);
                    }
                }
                url.to_string()
            }
            _ => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

/// RabbitMQ names and consumer limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitSettings {
    /// Prefix of every queue name (`<prefix>.leads`, `<prefix>.retry.<n>`, `<prefix>.dead`).
    pub queue_prefix: String,
    /// Unacknowledged deliveries a worker process holds at once.
    pub prefetch: u16,
    /// How long ingest waits for a publisher confirm before answering 503; below
    /// `ingest.enqueue_timeout_seconds`, so this path decides first.
    pub confirm_timeout_seconds: u64,
}

impl Default for RabbitSettings {
    fn default() -> Self {
        Self {
            queue_prefix: "nurture".into(),
            prefetch: 64,
            confirm_timeout_seconds: 4,
        }
    }
}

/// Webhook intake limits and de-duplication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Largest accepted body; larger ones get 413.
    pub max_body_bytes: usize,
    /// A body identical to one seen within this window (same source) is a duplicate.
    pub duplicate_window_hours: u32,
    /// Longest accepted free-text answer, in characters; longer ones get 422.
    pub max_answer_chars: usize,
    /// Longest wait for the queue to make a lead durable before answering 503 (webhook
    /// senders such as Tally give up after 10 s).
    pub enqueue_timeout_seconds: u64,
    /// Longest time a request may take, body upload included, before 408.
    pub request_timeout_seconds: u64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            duplicate_window_hours: 24,
            max_answer_chars: 4000,
            enqueue_timeout_seconds: 5,
            request_timeout_seconds: 30,
        }
    }
}

/// How workers take leads from the queue and retry them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Leads processed at once in this process.
    pub concurrency: usize,
    /// A leased lead not acknowledged within this time is handed out again.
    pub visibility_timeout_seconds: u64,
    /// Attempts before a lead goes to the dead-letter state.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with jitter.
    pub backoff_base_ms: u64,
    /// Retry delay cap.
    pub backoff_max_ms: u64,
    /// How often an idle worker looks for work it was not woken for.
    pub poll_interval_ms: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            visibility_timeout_seconds: 60,
            max_attempts: 5,
            backoff_base_ms: 500,
            backoff_max_ms: 60_000,
            poll_interval_ms: 250,
        }
    }
}

/// The built-in, transparent points model: a base plus the points of every rule that matches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreSettings {
    /// Points every lead starts with.
    pub base: i64,
    /// Rules, each adding (or taking away) points when its condition holds.
    pub rules: Vec<ScoreRule>,
    /// How many distinct rule fields a lead must carry for full confidence.
    pub fields_for_full_confidence: usize,
    /// `builtin` (points only), `llm` (the model's score) or `blend` (weighted mean).
    pub mode: ScoreMode,
    /// The LLM's weight in `blend` mode (0..=1); the built-in score gets the rest.
    pub llm_weight: f64,
    /// When the LLM's score differs from the built-in score by more than this many points,
    /// its confidence is lowered to `fallback_confidence` (the draft goes to review): a lead
    /// cannot talk the model into a score its data does not support.
    pub max_gap: i64,
    /// The confidence of a score that fell back to the built-in model because the LLM
    /// failed, and of a score whose gap was too large. Below `act.min_confidence` by
    /// default, so those drafts wait for a human.
    pub fallback_confidence: f64,
}

/// How leads are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreMode {
    /// The built-in points model (no LLM call).
    Builtin,
    /// The LLM's score; the built-in score is kept as the reference for the gap check.
    Llm,
    /// `llm_weight × LLM + (1 − llm_weight) × built-in`, both parts stored.
    Blend,
}

impl ScoreMode {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ScoreMode::Builtin => "builtin",
            ScoreMode::Llm => "llm",
            ScoreMode::Blend => "blend",
        }
    }
}

impl Default for ScoreSettings {
    fn default() -> Self {
        Self {
            base: 10,
            rules: crate::ai::points::default_rules(),
            fields_for_full_confidence: 3,
            mode: ScoreMode::Builtin,
            llm_weight: 0.5,
            max_gap: 40,
            fallback_confidence: 0.3,
        }
    }
}

/// One scoring rule. Exactly one of `equals`, `contains_any`, `at_least`, `below` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRule {
    /// Shown as the reason when the rule matches.
    pub label: String,
    /// `job_title`, `company`, `source`, `country`, `sector`, `company_size`,
    /// `answers.<key>`, `behaviour.<key>` or `utm.<key>`.
    pub field: String,
    /// Points added when the condition holds (negative to subtract).
    pub points: i64,
    /// Holds when the value equals one of these (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Vec<String>>,
    /// Holds when the value contains one of these words (case-insensitive, whole words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains_any: Option<Vec<String>>,
    /// Holds when the value is a number at least this large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<f64>,
    /// Holds when the value is a number smaller than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
}

/// Score bands: below `active_from` is drip, above `hot_above` is hot, active in between.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteSettings {
    /// Lowest score of the active track.
    pub active_from: u8,
    /// Scores above this are hot.
    pub hot_above: u8,
    /// Channels used per track: `email`, `sms`, `slack`.
    pub channels: BTreeMap<String, Vec<String>>,
}

impl Default for RouteSettings {
    fn default() -> Self {
        let channels = [
            ("drip", vec!["email"]),
            ("active", vec!["email"]),
            ("hot", vec!["email", "sms", "slack"]),
        ]
        .into_iter()
        .map(|(track, chans)| {
            (
                track.to_owned(),
                chans.into_iter().map(String::from).collect(),
            )
        })
        .collect();
        Self {
            active_from: 30,
            hot_above: 70,
            channels,
        }
    }
}

/// What the templates quote, and where marketers keep their own templates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComposeSettings {
    /// A folder laid out like `templates/` whose files replace the built-in ones.
    pub templates_dir: Option<PathBuf>,
    /// The product being sold, as named in messages.
    pub product_name: String,
    /// The company that sends.
    pub company_name: String,
    /// Sender of marketing email (`Name <address>`).
    pub email_from: String,
    /// Where the demo invitation links to.
    pub demo_url: String,
    /// Where the drip track points readers for more.
    pub resources_url: String,
    /// Unsubscribe link; `{lead_id}` is replaced with the lead's id.
    pub unsubscribe_url: String,
    /// Slack channel of the sales team.
    pub sales_slack_channel: String,
    /// Case-study sector slug to the words that put a lead in it (matched in sector,
    /// company and job title); the slug names `templates/case_studies/<slug>.txt`.
    pub sectors: BTreeMap<String, Vec<String>>,
}

impl Default for ComposeSettings {
    fn default() -> Self {
        let sectors = [
            (
                "banking",
                vec!["bank", "banking", "insurance", "credit", "lending"],
            ),
            (
                "fintech",
                vec!["fintech", "finance", "payments", "investment", "wealth"],
            ),
            (
                "software",
                vec!["software", "saas", "it", "technology", "tech"],
            ),
            (
                "education",
                vec!["education", "student", "school", "university", "training"],
            ),
        ]
        .into_iter()
        .map(|(slug, words)| {
            (
                slug.to_owned(),
                words.into_iter().map(String::from).collect(),
            )
        })
        .collect();
        Self {
            templates_dir: None,
            product_name: "Nurture Cloud".into(),
            company_name: "Example Corp".into(),
            email_from: "Example Corp <hello@example.com>".into(),
            demo_url: "https://www.example.com/demo".into(),
            resources_url: "https://www.example.com/resources".into(),
            unsubscribe_url: "https://www.example.com/unsubscribe?lead={lead_id}".into(),
            sales_slack_channel: "#sales-hot-leads".into(),
            sectors,
        }
    }
}

/// Compliance validators; the built-in rule lists always apply, these extend them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardSettings {
    /// Hosts links may point to (a host matches itself and its subdomains).
    pub allowed_link_domains: Vec<String>,
    /// Extra forbidden phrases (case-insensitive regular expressions).
    pub extra_forbidden_phrases: Vec<String>,
    /// Extra offensive words (whole words, case-insensitive).
    pub extra_offensive_words: Vec<String>,
    /// Longest email subject, in characters.
    pub max_subject_chars: usize,
    /// Longest email body, in characters.
    pub max_email_chars: usize,
    /// Longest SMS, in characters (two GSM segments by default).
    pub max_sms_chars: usize,
    /// Longest Slack message, in characters.
    pub max_slack_chars: usize,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            allowed_link_domains: vec!["example.com".into()],
            extra_forbidden_phrases: Vec::new(),
            extra_offensive_words: Vec::new(),
            max_subject_chars: 120,
            max_email_chars: 4000,
            max_sms_chars: 306,
            max_slack_chars: 3000,
        }
    }
}

/// When a draft that passed every check may go out without a human.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActSettings {
    /// Drafts whose score confidence is below this go to review.
    pub min_confidence: f64,
}

impl Default for ActSettings {
    fn default() -> Self {
        Self {
            min_confidence: 0.5,
        }
    }
}

/// Which LLM vendor API to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmProviderKind {
    /// No LLM: the built-in scorer and the templates.
    Builtin,
    /// OpenAI Chat Completions, or any server that speaks it (Azure OpenAI, Ollama, vLLM,
    /// llama.cpp, OpenRouter, Groq) at `base_url`.
    Openai,
    /// Anthropic Messages API.
    Anthropic,
}

/// Price of a model in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per million prompt tokens.
    pub input: f64,
    /// Per million answer tokens.
    pub output: f64,
}

/// The LLM: which vendor and model, how fast and how much it may be called.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// `builtin` (default: no network), `openai` or `anthropic`.
    pub provider: LlmProviderKind,
    /// API root; unset means `https://api.openai.com/v1` or `https://api.anthropic.com/v1`.
    pub base_url: Option<String>,
    /// The model that scores and writes.
    pub model: String,
    /// An optional second, cheaper model that judges each draft against the rules.
    pub judge_model: Option<String>,
    /// Name of the environment variable holding the API key (the key itself is never in
    /// the file or the logs). Empty for servers that need no key (Ollama, llama.cpp).
    /// Unset means `OPENAI_API_KEY` or `ANTHROPIC_API_KEY`.
    pub api_key_env: Option<String>,
    /// OpenAI-compatible only: `authorization` (Bearer) or `api-key` (Azure OpenAI).
    pub api_key_header: crate::ai::openai::ApiKeyHeader,
    /// Requests per minute, shared by all worker tasks of a process.
    pub requests_per_minute: u32,
    /// Tokens per minute (prompt estimate + answer limit), shared likewise.
    pub tokens_per_minute: u32,
    /// Calls in flight at once.
    pub max_concurrency: usize,
    /// Deadline of one call; past it the lead falls back to the built-in scorer.
    pub timeout_seconds: u64,
    /// A 429 asking to wait longer than this sends the lead back to the queue's delayed
    /// retry instead of holding a worker.
    pub max_wait_seconds: u64,
    /// Spend per UTC day after which the fallback is used until midnight; 0 = no limit.
    pub daily_budget_usd: f64,
    /// Prices of the models used, for cost and the budget. A model without a price is an
    /// error at start-up unless `daily_budget_usd` is 0.
    pub prices: BTreeMap<String, Price>,
    /// Let the LLM write the messages (the templates are the reference and the fallback).
    pub write: bool,
    /// Upper bound of an answer's tokens.
    pub max_output_tokens: u32,
    /// Each free-text field of a lead is cut to this many characters before it reaches a
    /// prompt.
    pub max_lead_text_chars: usize,
    /// A folder whose `*.txt` files replace the built-in prompts of the same name.
    pub prompts_dir: Option<PathBuf>,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open (fallback only), in seconds.
    pub breaker_cooldown_seconds: u64,
}

impl Default for LlmSettings {
    fn default() -> Self {
        // List prices as published by the vendors in 2025; check yours and override.
        let prices = [
            ("gpt-4o-mini", 0.15, 0.60),
            ("gpt-4.1-mini", 0.40, 1.60),
            ("gpt-4.1-nano", 0.10, 0.40),
            ("gpt-4o", 2.50, 10.00),
            ("claude-3-5-haiku-latest", 0.80, 4.00),
            ("claude-haiku-4-5", 1.00, 5.00),
            ("claude-sonnet-4-5", 3.00, 15.00),
        ]
        .into_iter()
        .map(|(m, input, output)| (m.to_owned(), Price { input, output }))
        .collect();
        Self {
            provider: LlmProviderKind::Builtin,
            base_url: None,
            model: "gpt-4o-mini".into(),
            judge_model: None,
            api_key_env: None,
            api_key_header: Default::default(),
            requests_per_minute: 60,
            tokens_per_minute: 100_000,
            max_concurrency: 4,
            timeout_seconds: 30,
            max_wait_seconds: 10,
            daily_budget_usd: 10.0,
            prices,
            write: true,
            max_output_tokens: 700,
            max_lead_text_chars: 500,
            prompts_dir: None,
            breaker_failures: 5,
            breaker_cooldown_seconds: 60,
        }
    }
}

impl LlmSettings {
    /// The API root in effect.
    pub fn effective_base_url(&self) -> String {
        match (&self.base_url, self.provider) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, LlmProviderKind::Anthropic) => "https://api.anthropic.com/v1".into(),
            (None, _) => "https://api.openai.com/v1".into(),
        }
    }

    /// The name of the variable holding the key; `None` when no key is sent.
    pub fn effective_key_env(&self) -> Option<String> {
        match (&self.api_key_env, self.provider) {
            (Some(name), _) if name.trim().is_empty() => None,
            (Some(name), _) => Some(name.clone()),
            (None, LlmProviderKind::Anthropic) => Some("ANTHROPIC_API_KEY".into()),
            (None, _) => Some("OPENAI_API_KEY".into()),
        }
    }

    /// The price of `model`; free when unknown (start-up refuses unknown models when a
    /// budget is set).
    pub fn price_of(&self, model: &str) -> Price {
        self.prices.get(model).copied().unwrap_or(Price {
            input: 0.0,
            output: 0.0,
        })
    }

    fn check(&self, mode: ScoreMode) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.provider == LlmProviderKind::Builtin {
            if mode != ScoreMode::Builtin {
                return invalid(format!(
                    "score.mode = \"{}\" needs an LLM: set llm.provider to openai or anthropic",
                    mode.as_str()
                ));
            }
            return Ok(());
        }
        if self.model.trim().is_empty() {
            return invalid("llm.model is empty".into());
        }
        match url::Url::parse(&self.effective_base_url()) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => {
                return invalid(format!(
                    "llm.base_url must be http:// or https://, got '{}'",
                    self.effective_base_url()
                ));
            }
        }
        if self.requests_per_minute == 0
            || self.tokens_per_minute == 0
            || self.max_concurrency == 0
            || self.timeout_seconds == 0
            || self.max_output_tokens == 0
            || self.breaker_failures == 0
        {
            return invalid("llm.requests_per_minute, tokens_per_minute, max_concurrency, timeout_seconds, max_output_tokens and breaker_failures must be at least 1".into());
        }
        if !self.daily_budget_usd.is_finite() || self.daily_budget_usd < 0.0 {
            return invalid("llm.daily_budget_usd must be 0 (no limit) or more".into());
        }
        if let Some((model, _)) = self.prices.iter().find(|(_, p)| {
            !(p.input.is_finite() && p.output.is_finite() && p.input >= 0.0 && p.output >= 0.0)
        }) {
            return invalid(format!("llm.prices.{model}: prices must be 0 or more"));
        }
        if self.daily_budget_usd > 0.0 {
            let models = std::iter::once(&self.model).chain(self.judge_model.as_ref());
            for model in models {
                if !self.prices.contains_key(model) {
                    return invalid(format!(
                        "llm.prices has no price for model '{model}', needed for llm.daily_budget_usd (add [llm.prices.\"{model}\"] input = …, output = … in USD per million tokens; 0 for a free local model)"
                    ));
                }
            }
        }
        if let Some(name) = self.effective_key_env()
            && std::env::var(&name).map_or(true, |v| v.trim().is_empty())
        {
            return invalid(format!(
                "llm.api_key_env: the variable {name} is not set (export it, or set llm.api_key_env = \"\" for a server that needs no key)"
            ));
        }
        Ok(())
    }
}

/// Values given on the command line; they win over every other source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// Settings that could not be loaded; the message names the key and the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or holds a bad or unknown key.
    #[error("configuration error: {0}")]
    Load(Box<figment::Error>),
    /// The values parse but contradict each other.
    #[error("configuration error: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads defaults, then `file` (which must exist when given), then the environment,
    /// then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.is_file() {
                let shown = path.display();
                return Err(ConfigError::Invalid(format!(
                    "config file '{shown}' not found"
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let settings: Settings = figment
            .merge(Env::prefixed("NURTURE__").split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.route.active_from > self.route.hot_above {
            return invalid(format!(
                "route.active_from ({}) is above route.hot_above ({})",
                self.route.active_from, self.route.hot_above
            ));
        }
        for track in ["drip", "active", "hot"] {
            let Some(channels) = self.route.channels.get(track) else {
                return invalid(format!("route.channels.{track} is missing"));
            };
            if let Some(bad) = channels
                .iter()
                .find(|c| !["email", "sms", "slack"].contains(&c.as_str()))
            {
                return invalid(format!("route.channels.{track}: unknown channel '{bad}'"));
            }
        }
        if self.queue == QueueKind::Rabbitmq {
            let scheme = url::Url::parse(self.amqp_url.expose()).map(|u| u.scheme().to_owned());
            match scheme.as_deref() {
                Ok("amqp") => {}
                Ok("amqps") => {
                    return invalid(
                        "amqp_url: amqps:// (TLS) is not supported by this build, use amqp://"
                            .into(),
                    );
                }
                _ => {
                    return invalid(format!(
                        "amqp_url must be amqp://…, got '{}'",
                        self.amqp_url.masked()
                    ));
                }
            }
        }
        let db = self.effective_database_url();
        if !db.starts_with("sqlite:")
            && !db.starts_with("postgres:")
            && !db.starts_with("postgresql:")
        {
            return invalid(format!(
                "database_url must start with sqlite:// or postgres://, got '{}'",
                SecretUrl(db).masked()
            ));
        }
        if self.worker.concurrency == 0 || self.worker.max_attempts == 0 {
            return invalid("worker.concurrency and worker.max_attempts must be at least 1".into());
        }
        self.check_ranges()?;
        crate::ai::points::check_rules(&self.score.rules).map_err(ConfigError::Invalid)?;
        self.llm.check(self.score.mode)?;
        // Built here once so that a bad sender or pattern stops start-up (and `config show`)
        // instead of failing every lead later.
        self.compose
            .email_from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| ConfigError::Invalid(format!("compose.email_from: {e}")))?;
        crate::pipeline::Guard::new(self.guard.clone())
            .map_err(|e| ConfigError::Invalid(format!("guard pattern: {e}")))?;
        Ok(())
    }

    fn check_ranges(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(track) = self
            .route
            .channels
            .keys()
            .find(|t| !["drip", "active", "hot"].contains(&t.as_str()))
        {
            return invalid(format!(
                "route.channels.{track}: unknown track (drip, active, hot)"
            ));
        }
        if self.route.hot_above >= 100 || self.route.active_from == 0 {
            return invalid(
                "route.hot_above must be below 100 and route.active_from above 0".into(),
            );
        }
        for (name, value) in [
            ("score.llm_weight", self.score.llm_weight),
            ("score.fallback_confidence", self.score.fallback_confidence),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return invalid(format!("{name} ({value}) must be within 0..=1"));
            }
        }
        if self.score.fallback_confidence >= self.act.min_confidence {
            return invalid(format!(
                "score.fallback_confidence ({}) must be below act.min_confidence ({}): a fallback or suspicious score must wait for a human",
                self.score.fallback_confidence, self.act.min_confidence
            ));
        }
        if !(0..=99).contains(&self.score.max_gap) {
            return invalid(format!(
                "score.max_gap ({}) must be within 0..=99",
                self.score.max_gap
            ));
        }
        if !(0.0..=1.0).contains(&self.act.min_confidence) {
            return invalid(format!(
                "act.min_confidence ({}) must be within 0..=1",
                self.act.min_confidence
            ));
        }
        if self.ingest.max_body_bytes < 1024 || self.ingest.enqueue_timeout_seconds == 0 {
            return invalid("ingest.max_body_bytes must be at least 1024 and ingest.enqueue_timeout_seconds at least 1".into());
        }
        Ok(())
    }

    /// The CRM database URL in effect.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("nurture.db").display()),
        }
    }

    /// The effective settings as TOML, for `nurture config show`, passwords masked.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.amqp_url = SecretUrl(self.amqp_url.masked());
        shown.database_url = self.database_url.as_ref().map(|u| SecretUrl(u.masked()));
        shown.llm.base_url = self.llm.base_url.as_deref().map(crate::ai::http::shown_url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render settings: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_in_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "[worker]\nconcurency = 3\n").unwrap();

        let err = Settings::load(Some(&path), &Overrides::default()).unwrap_err();

        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    fn file_values_override_defaults_and_flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "data_dir = \"/tmp/x\"\n[route]\nhot_above = 80\n").unwrap();
        let overrides = Overrides {
            data_dir: Some("/tmp/y".into()),
            ..Overrides::default()
        };

        let settings = Settings::load(Some(&path), &overrides).unwrap();

        assert_eq!(settings.route.hot_above, 80);
        assert_eq!(settings.route.active_from, 30);
        assert_eq!(settings.data_dir, PathBuf::from("/tmp/y"));
    }

    #[test]
    fn mistakes_that_would_fail_every_lead_stop_start_up() {
        let load = |toml: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("n.toml");
            std::fs::write(&path, toml).unwrap();
            Settings::load(Some(&path), &Overrides::default())
                .unwrap_err()
                .to_string()
        };

        assert!(load("[compose]\nemail_from = \"not an address\"\n").contains("email_from"));
        assert!(load("[guard]\nextra_forbidden_phrases = [\"(\"]\n").contains("guard pattern"));
        assert!(load("[route.channels]\nwarm = [\"email\"]\n").contains("warm"));
        assert!(load("[route]\nhot_above = 150\n").contains("hot_above"));
        assert!(load("[act]\nmin_confidence = 5.0\n").contains("min_confidence"));
        let tls = "queue = \"rabbitmq\"\namqp_url = \"amqps://u:p@h/%2f\"\n";
        assert!(load(tls).contains("amqps:// (TLS) is not supported"));
        assert!(load("queue = \"rabbitmq\"\namqp_url = \"not a url\"\n").contains("amqp_url"));
        assert!(
            load("[score]\nfallback_confidence = 0.9\n")
                .contains("must be below act.min_confidence")
        );
        assert!(load("[score]\nmode = \"llm\"\n").contains("needs an LLM"));
        let no_price = "[llm]\nprovider = \"openai\"\nmodel = \"x\"\napi_key_env = \"\"\n";
        assert!(load(no_price).contains("no price for model 'x'"));
        let bad_url = "[llm]\nprovider = \"openai\"\nbase_url = \"ftp://h\"\napi_key_env = \"\"\n";
        assert!(load(bad_url).contains("llm.base_url"));
    }

    #[test]
    fn passwords_are_masked_in_config_show() {
        let settings = Settings {
            database_url: Some(SecretUrl("postgres://app:s3cret@db.example.com/crm".into())),
            ..Settings::default()
        };

        let shown = settings.to_toml();

        assert!(
            !shown.contains("s3cret") && !shown.contains("guest:guest"),
            "{shown}"
        );
        assert!(
            shown.contains("postgres://app:****@db.example.com/crm"),
            "{shown}"
        );
        let query = SecretUrl("postgres://app@h/x?password=s3cret&sslmode=off".into());
        assert_eq!(
            query.masked(),
            "postgres://app@h/x?password=****&sslmode=off"
        );
    }

    #[test]
    fn the_shipped_production_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("nurture.production.example.toml");

        let settings = Settings::load(Some(&path), &Overrides::default()).unwrap();

        assert_eq!(settings.queue, QueueKind::Rabbitmq);
        assert!(settings.effective_database_url().starts_with("postgres://"));
    }

    #[test]
    fn the_shipped_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("nurture.example.toml");

        let settings = Settings::load(Some(&path), &Overrides::default()).unwrap();

        assert_eq!(settings.listen.port(), 8080);
    }
}
