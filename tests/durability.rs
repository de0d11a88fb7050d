//! Accepted leads survive `kill -9` of the server at any moment, and nothing is sent twice.
//! These tests run the real binary as a child process.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    Backends, Process, free_port, outbox_files, spawn_nurture, stats_of, test_backends, wait_for,
    wait_up,
};
use nurture::replay::{ReplayOptions, replay};
use serde_json::json;

fn spawn_server(dir: &Path, port: u16, backends: &Option<Backends>) -> Process {
    let env = [
        ("NURTURE__WORKER__CONCURRENCY", "1"),
        ("NURTURE__WORKER__VISIBILITY_TIMEOUT_SECONDS", "2"),
    ];
    spawn_nurture("serve", port, dir, backends.as_ref(), &env)
}

fn leads(prefix: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let body = json!({ "email": format!("{prefix}-{i}@example.com"), "name": format!("Lead {i}"),
                               "job_title": "Analyst", "source": "google", "consent": true });
            serde_json::to_vec(&body).unwrap()
        })
        .collect()
}

/// After a crash and restart: every received lead processed once, one email file per lead,
/// each file named by the key its Message-ID carries, no half-written files left.
async fn assert_exactly_once(base: &str, dir: &Path, expected: u64) {
    let done = wait_for(Duration::from_secs(90), || async {
        stats_of(base)
            .await
            .is_some_and(|s| s["processed"] == expected && s["queue_depth"] == 0)
    })
    .await;
    let stats = stats_of(base).await.unwrap();
    assert!(done, "not all leads processed after restart: {stats}");
    assert_eq!(
        (stats["received"].as_u64(), stats["dead_lettered"].as_u64()),
        (Some(expected), Some(0))
    );
    assert_eq!(stats["by_outcome"]["sent"].as_u64(), Some(expected));
    let files = outbox_files(dir, "email");
    assert_eq!(files.len() as u64, expected);
    for file in &files {
        let key = file.file_stem().unwrap().to_string_lossy().to_string();
        let eml = std::fs::read_to_string(file).unwrap();
        assert!(
            eml.contains(&format!("Message-ID: <{key}@nurture.local>")),
            "{}",
            file.display()
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.join("outbox/.partial"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_leads_survive_a_kill_before_the_workers_finish() {
    let dir = tempfile::tempdir().unwrap();
    let backends = test_backends();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(dir.path(), port, &backends);
    wait_up(&base).await;

    let options = ReplayOptions {
        url: base.clone(),
        concurrency: 16,
        progress: false,
    };
    let posted = replay(leads("before", 500), &options).await.unwrap();
    let before_kill = stats_of(&base).await.unwrap();
    server.kill();

    assert_eq!(posted.accepted, 500);
    let processed_before = before_kill["processed"].as_u64().unwrap();
    assert!(
        processed_before < 500,
        "workers finished before the kill; the test proves nothing"
    );
    let mut server = spawn_server(dir.path(), port, &backends);
    wait_up(&base).await;
    assert_exactly_once(&base, dir.path(), 500).await;
    server.kill();
    if let Some(b) = &backends {
        b.remove(&nurture::config::Settings::default()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_in_the_middle_of_intake_loses_nothing_the_sender_was_told_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let backends = test_backends();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(dir.path(), port, &backends);
    wait_up(&base).await;

    // The sender keeps retrying refused connections with backoff, like a webhook source.
    let options = ReplayOptions {
        url: base.clone(),
        concurrency: 16,
        progress: false,
    };
    let sender = tokio::spawn(async move { replay(leads("during", 500), &options).await.unwrap() });
    let mid_intake = wait_for(Duration::from_secs(30), || async {
        stats_of(&base)
            .await
            .is_some_and(|s| s["received"].as_u64().unwrap_or(0) >= 150)
    })
    .await;
    server.kill();
    assert!(mid_intake, "intake never reached 150 leads");
    let mut server = spawn_server(dir.path(), port, &backends);
    let posted = sender.await.unwrap();

    // A lead committed just before the kill, whose 202 was lost, comes back as a duplicate.
    assert_eq!(posted.accepted + posted.duplicate, 500, "{posted:?}");
    assert_eq!(posted.failed, 0);
    assert_exactly_once(&base, dir.path(), 500).await;
    server.kill();
    if let Some(b) = &backends {
        b.remove(&nurture::config::Settings::default()).await;
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let backends = test_backends();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(dir.path(), port, &backends);
    wait_up(&base).await;
    let options = ReplayOptions {
        url: base.clone(),
        concurrency: 8,
        progress: false,
    };
    replay(leads("term", 50), &options).await.unwrap();

    let pid = server.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.wait();

    assert!(status.success(), "exit status {status}");
    // Whatever was in flight finished; the rest waits in the queue for the next start.
    let mut server = spawn_server(dir.path(), port, &backends);
    wait_up(&base).await;
    assert_exactly_once(&base, dir.path(), 50).await;
    server.kill();
    if let Some(b) = &backends {
        b.remove(&nurture::config::Settings::default()).await;
    }
}
