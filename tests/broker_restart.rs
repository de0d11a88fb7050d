//! The broker goes away mid-replay (`rabbitmqctl stop_app`, then `start_app`): ingest answers
//! 503 with Retry-After meanwhile, nothing accepted is lost, and the consumers resume
//! without a restart. Alone in its binary because it stops the machine's RabbitMQ.
//! Runs with NURTURE_TEST_BACKEND=production.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TestApp, flat_lead, wait_for};
use nurture::replay::{ReplayOptions, replay};

async fn rabbitmqctl(action: &'static str) {
    let status =
        tokio::task::spawn_blocking(move || Command::new("rabbitmqctl").arg(action).status())
            .await
            .unwrap()
            .unwrap();
    assert!(status.success(), "rabbitmqctl {action} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_replay_loses_nothing_and_consumers_resume() {
    if !common::is_production() {
        eprintln!("SKIPPING: runs with NURTURE_TEST_BACKEND=production (RabbitMQ and PostgreSQL)");
        return;
    }
    // A short confirm timeout keeps the takeover of uncertain publishes (twice the timeout)
    // within the test's patience.
    let app = TestApp::start(|s| s.rabbitmq.confirm_timeout_seconds = 2).await;
    let bodies: Vec<Vec<u8>> = (0..1000)
        .map(|i| serde_json::to_vec(&flat_lead(&format!("restart-{i}@example.com"))).unwrap())
        .collect();
    let options = ReplayOptions {
        url: app.base.clone(),
        concurrency: 8,
        progress: false,
    };
    let sender = tokio::spawn(async move { replay(bodies, &options).await.unwrap() });
    let underway = wait_for(Duration::from_secs(30), || async {
        app.get("/api/stats").await.1["received"]
            .as_u64()
            .unwrap_or(0)
            >= 200
    })
    .await;
    assert!(underway, "replay never got going");

    rabbitmqctl("stop_app").await;
    let (status, body) = app.post(&flat_lead("during-outage@example.com")).await;
    let retry_after = app
        .client
        .post(format!("{}/webhook/lead-in", app.base))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&flat_lead("during-outage-2@example.com")).unwrap())
        .send()
        .await
        .unwrap()
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl("start_app").await;
    let posted = sender.await.unwrap();
    // Like a webhook source, send the two refused leads again until they are accepted. A
    // publish cut off by the outage may have landed; its retry reuses the event id.
    for email in ["during-outage@example.com", "during-outage-2@example.com"] {
        let accepted = wait_for(Duration::from_secs(60), || async {
            matches!(app.post(&flat_lead(email)).await.0, 200 | 202)
        })
        .await;
        assert!(
            accepted,
            "{email} was never accepted after the broker came back"
        );
    }

    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_eq!(
        (posted.accepted + posted.duplicate, posted.failed),
        (1000, 0),
        "{posted:?}"
    );
    let stats = app.wait_processed(1002).await;
    assert_eq!(
        (stats["received"].as_u64(), stats["processed"].as_u64()),
        (Some(1002), Some(1002)),
        "{stats}"
    );
    assert_eq!(app.outbox_files("email").len(), 1002);
    app.stop().await;
}
