//! `nurture demo`: the main job on real data. Starts the embedded default, replays the shipped
//! UCI bank-marketing rows through the real webhook, waits for the pipeline to drain, and
//! prints what happened.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::{Stats, collect_stats};
use crate::config::Settings;
use crate::replay::{
    ReplayOptions, ReplaySummary, bodies_with_built_in_mapping, load_bodies, replay,
};
use crate::server::{self, Running};

/// The data set shipped with the repository and compiled into the binary, so the demo runs
/// from any folder (UCI Bank Marketing, CC BY 4.0; attribution in its SOURCE.md).
const BANK_CSV: &[u8] = include_bytes!("../data/bank-marketing/bank-additional.csv");
const BANK_CSV_NAME: &str = "bank-additional.csv (UCI Bank Marketing, CC BY 4.0, built in)";

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// CSV or JSONL to replay; `None` replays the built-in bank-marketing rows.
    pub file: Option<PathBuf>,
    /// Stop after the summary instead of serving until Ctrl-C.
    pub exit: bool,
    /// Requests in flight during the replay.
    pub concurrency: usize,
    /// Longest wait for the pipeline to drain.
    pub drain_timeout: Duration,
}

/// Runs the demo with `settings` (whose data dir should be fresh) until done or `shutdown`.
pub async fn run(
    mut settings: Settings,
    options: DemoOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (bodies, name) = match &options.file {
        Some(file) => (load_bodies(file, None, None)?, file.display().to_string()),
        None => (
            bodies_with_built_in_mapping(BANK_CSV_NAME, BANK_CSV)?,
            BANK_CSV_NAME.to_owned(),
        ),
    };
    let running = start_on_free_port(&mut settings, shutdown.clone()).await?;
    let base = format!("http://{}", running.addr);
    println!(
        "nurture is listening on {base} (data in {})",
        settings.data_dir.display()
    );
    println!(
        "replaying {} rows of {} through POST {base}/webhook/lead-in ...",
        bodies.len(),
        name
    );

    let replay_options = ReplayOptions {
        url: base.clone(),
        concurrency: options.concurrency,
        progress: true,
    };
    let posted = replay(bodies, &replay_options).await?;
    let stats = wait_for_drain(&running, posted.accepted, options.drain_timeout).await?;
    print_summary(&posted, &stats, &settings.data_dir, started.elapsed());

    if options.exit {
        return running.stop().await;
    }
    println!(
        "\nstill serving on {base}: try {base}/api/stats, {base}/api/leads/1, {base}/metrics (Ctrl-C stops)"
    );
    running.wait().await
}

async fn start_on_free_port(
    settings: &mut Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    match server::start(settings.clone(), shutdown.clone()).await {
        Ok(running) => Ok(running),
        Err(e) if e.chain().any(|c| c.to_string().contains("cannot listen")) => {
            eprintln!("{} is taken; using a free port instead", settings.listen);
            settings.listen.set_port(0);
            server::start(settings.clone(), shutdown).await
        }
        Err(e) => Err(e),
    }
}

/// Polls the stats until every accepted lead is processed or dead-lettered and the queue is
/// empty.
async fn wait_for_drain(
    running: &Running,
    accepted: u64,
    timeout: Duration,
) -> anyhow::Result<Stats> {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = collect_stats(&running.state)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if stats.processed + stats.dead_lettered >= accepted && stats.queue_depth == 0 {
            return Ok(stats);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "pipeline did not drain within {timeout:?}: {} of {accepted} processed, {} in the queue",
                stats.processed,
                stats.queue_depth
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_summary(posted: &ReplaySummary, stats: &Stats, data_dir: &Path, elapsed: Duration) {
    let list = |map: &std::collections::BTreeMap<String, u64>| {
        if map.is_empty() {
            return "none".to_owned();
        }
        map.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    let outbox = |channel: &str| count_files(&data_dir.join("outbox").join(channel));
    println!("\n== nurture demo summary ==");
    println!(
        "posted      {} leads in {:.1} s: {} accepted, {} duplicate, {} rejected, {} failed",
        posted.accepted + posted.duplicate + posted.rejected + posted.failed,
        posted.elapsed_ms as f64 / 1000.0,
        posted.accepted,
        posted.duplicate,
        posted.rejected,
        posted.failed
    );
    if !posted.rejections.is_empty() {
        println!("rejected    {}", list(&posted.rejections));
    }
    println!(
        "processed   {} ({} dead-lettered, {} still queued)",
        stats.processed, stats.dead_lettered, stats.queue_depth
    );
    println!("tracks      {}", list(&stats.by_track));
    println!("outcomes    {}", list(&stats.by_outcome));
    println!("review why  {}", list(&stats.review_reasons));
    let blocked: std::collections::BTreeMap<String, u64> = stats
        .review_reasons
        .iter()
        .filter(|(k, _)| !["low_confidence", "template_error"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    println!("blocked by  {}", list(&blocked));
    println!(
        "latency     p50 {:.0} ms · p99 {:.0} ms (webhook accepted → action done)",
        stats.e2e_latency_ms.p50, stats.e2e_latency_ms.p99
    );
    println!(
        "outbox      {} email · {} sms · {} slack files in {}",
        outbox("email"),
        outbox("sms"),
        outbox("slack"),
        data_dir.join("outbox").display()
    );
    println!("wall time   {:.1} s", elapsed.as_secs_f64());
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).count())
        .unwrap_or(0)
}

/// A fresh folder for one demo run, under `parent`, named by the time.
pub fn fresh_data_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    let stamp = crate::queue::embedded::now_ms();
    let dir = parent.join(format!("demo-{stamp}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    Ok(dir)
}
