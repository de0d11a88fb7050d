//! The dead-letter path: a stage that always fails, and a message that can never be parsed,
//! end in the dead-letter state with their reasons while the leads behind them keep flowing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nurture::config::WorkerSettings;
use nurture::pipeline::{Handled, Handler, Outcome, StageError, Track, run_workers};
use nurture::queue::{DedupKey, EmbeddedQueue, NewMessage, Queue, RabbitQueue, Role};
use tokio_util::sync::CancellationToken;

mod common;

/// Fails every payload that says "fail"; handles the rest.
struct FlakyStage {
    calls_on_failing: AtomicU32,
}

#[async_trait]
impl Handler for FlakyStage {
    async fn handle(
        &self,
        payload: &[u8],
        _attempt: u32,
        _is_last: bool,
    ) -> Result<Handled, StageError> {
        if payload == b"fail" {
            self.calls_on_failing.fetch_add(1, Ordering::SeqCst);
            return Err(StageError::Retry("crm enrichment timed out".into()));
        }
        if payload == b"poison" {
            return Err(StageError::Permanent(
                "unparseable queue message: EOF".into(),
            ));
        }
        Ok(Handled {
            lead_id: 1,
            track: Track::Drip,
            outcome: Outcome::Sent,
            blocked_by: Vec::new(),
            latency_ms: 1,
            is_first_finish: true,
        })
    }
}

fn message(event_id: &str, payload: &[u8]) -> NewMessage {
    NewMessage {
        event_id: event_id.into(),
        dedup_keys: vec![DedupKey {
            key: event_id.into(),
            ttl_ms: None,
        }],
        payload: payload.to_vec(),
    }
}

#[tokio::test]
async fn a_stage_that_always_fails_ends_in_the_dead_letter_queue_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let settings = WorkerSettings {
        concurrency: 2,
        max_attempts: 4,
        backoff_base_ms: 5,
        backoff_max_ms: 20,
        poll_interval_ms: 5,
        ..WorkerSettings::default()
    };
    let shutdown = CancellationToken::new();
    // The queue outlives the workers so the test can read it after they stop.
    let queue_shutdown = CancellationToken::new();
    let backends = common::test_backends();
    let queue: Arc<dyn Queue> = match &backends {
        None => Arc::new(
            EmbeddedQueue::open(dir.path(), settings.clone())
                .await
                .unwrap(),
        ),
        Some(b) => {
            let log = nurture::store::SqlStore::connect(&b.database_url, 4)
                .await
                .unwrap();
            let rabbit = nurture::config::RabbitSettings {
                queue_prefix: b.queue_prefix.clone(),
                ..Default::default()
            };
            let url = nurture::config::Settings::default()
                .amqp_url
                .expose()
                .to_owned();
            let role = Role::PublishAndConsume;
            RabbitQueue::start(
                &url,
                rabbit,
                settings.clone(),
                Arc::new(log),
                role,
                queue_shutdown.clone(),
            )
            .await
            .unwrap()
        }
    };
    queue
        .enqueue(message("always-fails", b"fail"))
        .await
        .unwrap();
    queue.enqueue(message("poison", b"poison")).await.unwrap();
    for i in 0..20 {
        queue
            .enqueue(message(&format!("good-{i}"), b"ok"))
            .await
            .unwrap();
    }
    nurture::telemetry::prometheus();
    let stage = Arc::new(FlakyStage {
        calls_on_failing: AtomicU32::new(0),
    });
    let mut workers = run_workers(queue.clone(), stage.clone(), &settings, shutdown.clone());

    let drained = common_wait(|| async {
        let stats = queue.stats().await.unwrap();
        stats.depth == 0 && stats.dead_lettered == 2
    })
    .await;
    shutdown.cancel();
    while workers.join_next().await.is_some() {}

    assert!(
        drained,
        "queue never drained: {:?}",
        queue.stats().await.unwrap()
    );
    let mut letters = queue.dead_letters(10).await.unwrap();
    letters.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    let summary: Vec<(&str, u32, &str)> = letters
        .iter()
        .map(|l| (l.event_id.as_str(), l.attempts, l.reason.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("always-fails", 4, "crm enrichment timed out"),
            ("poison", 1, "unparseable queue message: EOF")
        ]
    );
    assert_eq!(stage.calls_on_failing.load(Ordering::SeqCst), 4);
    let metrics = nurture::telemetry::prometheus().render();
    for cause in ["retries_exhausted", "unparseable"] {
        let line = format!("nurture_leads_dead_lettered_total{{cause=\"{cause}\"}}");
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
    assert!(metrics.contains("nurture_dead_letter_attempts"));
    // Listing puts the letters back (on RabbitMQ asynchronously): they are still there.
    let kept = common_wait(|| async { queue.stats().await.unwrap().dead_lettered == 2 }).await;
    assert!(kept, "listing dead letters lost some");

    // Replaying while workers run: the poison message fails again at once and returns to the
    // dead queue; the replay must still end, having moved what was there when it started.
    let again = CancellationToken::new();
    let mut workers = run_workers(queue.clone(), stage.clone(), &settings, again.clone());
    let replayed = tokio::time::timeout(Duration::from_secs(20), queue.replay_dead(None)).await;
    again.cancel();
    while workers.join_next().await.is_some() {}
    assert_eq!(replayed.expect("dlq replay never finished").unwrap(), 2);
    queue_shutdown.cancel();
    if let Some(b) = &backends {
        let cleanup = nurture::config::Settings {
            worker: settings,
            ..Default::default()
        };
        b.remove(&cleanup).await;
    }
}

async fn common_wait<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_truncated_message_on_the_broker_is_dead_lettered_and_leads_behind_it_flow() {
    if !common::is_production() {
        eprintln!("SKIPPING: runs with NURTURE_TEST_BACKEND=production (RabbitMQ and PostgreSQL)");
        return;
    }
    use lapin::options::BasicPublishOptions;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let app = common::TestApp::start(|_| {}).await;
    let prefix = app.backends.as_ref().unwrap().queue_prefix.clone();
    let url = nurture::config::Settings::default()
        .amqp_url
        .expose()
        .to_owned();
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let truncated = br#"{"event_id":"cut-short","received_at_ms":1,"lead":{"email":"a@exa"#;

    channel
        .basic_publish(
            "".into(),
            format!("{prefix}.leads").as_str().into(),
            BasicPublishOptions::default(),
            truncated,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    for i in 0..20 {
        let (status, _) = app
            .post(&common::flat_lead(&format!("behind-{i}@example.com")))
            .await;
        assert_eq!(status, 202);
    }

    let stats = app.wait_processed(21).await;
    assert_eq!(
        (stats["processed"].as_u64(), stats["dead_lettered"].as_u64()),
        (Some(20), Some(1)),
        "{stats}"
    );
    let state = app.running.as_ref().unwrap().state.clone();
    let letters = state.queue.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    assert!(
        letters[0].reason.starts_with("unparseable queue message"),
        "{}",
        letters[0].reason
    );
    let (_, stats) = app.get("/api/stats").await;
    assert_eq!(stats["dead_letters"][0]["attempts"], 1, "{stats}");
    assert!(
        stats["dead_letters"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("unparseable")
    );
    let _ = connection.close(200, "done".into()).await;
    app.stop().await;
}
