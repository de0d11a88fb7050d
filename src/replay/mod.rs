//! `nurture replay`: posts webhook bodies from a JSONL file, or CSV rows through a column
//! mapping, to a running server, and counts what it answered.

pub mod mapping;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

pub use mapping::{Mapping, bodies_from_csv, bodies_from_csv_bytes};

/// The shipped mappings, tried in turn when a CSV comes without `--mapping`.
const BUILT_IN_MAPPINGS: &[(&str, &str)] = &[
    (
        "bank-marketing",
        include_str!("../../mappings/bank-marketing.toml"),
    ),
    (
        "x-education-leads",
        include_str!("../../mappings/x-education-leads.toml"),
    ),
];

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Server base URL (`http://127.0.0.1:8080`) or the full webhook URL.
    pub url: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// What the server answered, by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplaySummary {
    /// 202: queued.
    pub accepted: u64,
    /// 200: seen before.
    pub duplicate: u64,
    /// 4xx: refused.
    pub rejected: u64,
    /// No answer or 5xx after every retry.
    pub failed: u64,
    /// Refusals by `code field`.
    pub rejections: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// Reads bodies from `file`: `.csv` rows through `mapping` (or a built-in mapping whose
/// columns the header has), anything else as JSONL. At most `limit` bodies.
pub fn load_bodies(
    file: &Path,
    mapping: Option<&Path>,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read '{}'", file.display()))?;
    let name = file.display().to_string();
    let is_csv = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let mut bodies = match (is_csv, mapping) {
        (true, Some(path)) => bodies_from_csv_bytes(&name, &bytes, &Mapping::load(path)?)?,
        (true, None) => bodies_with_built_in_mapping(&name, &bytes)?,
        (false, _) => String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect(),
    };
    if let Some(limit) = limit {
        bodies.truncate(limit);
    }
    Ok(bodies)
}

/// Maps CSV with the first shipped mapping whose columns are all in its header.
pub fn bodies_with_built_in_mapping(name: &str, bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    for (mapping_name, text) in BUILT_IN_MAPPINGS {
        let mapping: Mapping =
            toml::from_str(text).with_context(|| format!("built-in mapping {mapping_name}"))?;
        if let Ok(bodies) = bodies_from_csv_bytes(name, bytes, &mapping) {
            return Ok(bodies);
        }
    }
    anyhow::bail!(
        "no built-in mapping fits the columns of '{name}': pass --mapping FILE (see mappings/)"
    )
}

/// Posts every body and counts the answers. 503s and connection errors are retried with
/// backoff (the server said it could not make the lead durable yet).
pub async fn replay(
    bodies: Vec<Vec<u8>>,
    options: &ReplayOptions,
) -> anyhow::Result<ReplaySummary> {
    let url = webhook_url(&options.url)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let bar = if options.progress {
        ProgressBar::new(bodies.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} leads posted ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut answers = futures::stream::iter(bodies)
        .map(|body| post_with_retry(&client, &url, body))
        .buffer_unordered(options.concurrency.max(1));

    let mut summary = ReplaySummary::default();
    while let Some(answer) = answers.next().await {
        match answer {
            Answer::Accepted => summary.accepted += 1,
            Answer::Duplicate => summary.duplicate += 1,
            Answer::Rejected(reason) => {
                summary.rejected += 1;
                *summary.rejections.entry(reason).or_insert(0) += 1;
            }
            Answer::Failed => summary.failed += 1,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

enum Answer {
    Accepted,
    Duplicate,
    Rejected(String),
    Failed,
}

async fn post_with_retry(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Answer {
    // About a minute of retries: long enough to ride out a restart or a broker failover.
    for attempt in 1..=16u32 {
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().as_u16() == 202 => return Answer::Accepted,
            Ok(r) if r.status().as_u16() == 200 => return Answer::Duplicate,
            Ok(r) if r.status().is_client_error() => {
                return Answer::Rejected(rejection_reason(r).await);
            }
            Ok(r) if r.status().as_u16() != 503 => return Answer::Failed,
            _ => {
                let delay = crate::queue::backoff::delay_ms(attempt, 200, 5_000);
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
        }
    }
    Answer::Failed
}

async fn rejection_reason(response: reqwest::Response) -> String {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let error = &body["error"];
    let code = error["code"].as_str().unwrap_or("unknown");
    match error["field"].as_str() {
        Some(field) => format!("{status} {code} {field}"),
        None => format!("{status} {code}"),
    }
}

fn webhook_url(base: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(base).with_context(|| format!("invalid --url '{base}'"))?;
    if url.scheme() != "http" {
        anyhow::bail!("--url must be http:// (this build of replay has no TLS)");
    }
    if url.path() == "/" || url.path().is_empty() {
        return Ok(url.join("/webhook/lead-in")?.to_string());
    }
    Ok(url.to_string())
}
