//! Production mode under crashes: 2 ingest and 3 worker processes on RabbitMQ and
//! PostgreSQL, a steady replay of Leads.csv, and five rounds of SIGKILL (a random worker,
//! then an ingest) with restarts. Every accepted lead must end processed exactly once, with
//! exactly one outbox message per idempotency key.
//! Runs with NURTURE_TEST_BACKEND=production (the second pass of .ci/run).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    Backends, Process, free_port, outbox_files, shared_data, spawn_nurture, stats_of, wait_for,
    wait_up,
};
use nurture::replay::{ReplayOptions, load_bodies, replay};
use rand::Rng;

fn nurture(part: &str, port: u16, dir: &Path, backends: &Backends) -> Process {
    spawn_nurture(part, port, dir, Some(backends), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_workers_and_ingest_under_load_processes_every_lead_exactly_once() {
    if !common::is_production() {
        eprintln!("SKIPPING: runs with NURTURE_TEST_BACKEND=production (RabbitMQ and PostgreSQL)");
        return;
    }
    let Some(file) = shared_data("leads/Leads.csv") else {
        return;
    };
    let bodies = load_bodies(&file, None, Some(3000)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::fresh();
    let migrated = Command::new(env!("CARGO_BIN_EXE_nurture"))
        .arg("migrate")
        .envs(backends.env())
        .status()
        .unwrap();
    assert!(migrated.success());

    let ingest_ports = [free_port(), free_port()];
    let worker_ports = [free_port(), free_port(), free_port()];
    let mut ingests: Vec<Process> = ingest_ports
        .iter()
        .map(|p| nurture("ingest", *p, dir.path(), &backends))
        .collect();
    let mut workers: Vec<Process> = worker_ports
        .iter()
        .map(|p| nurture("worker", *p, dir.path(), &backends))
        .collect();
    let bases: Vec<String> = ingest_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    for base in &bases {
        wait_up(base).await;
    }

    let (left, right) = bodies.split_at(bodies.len() / 2);
    let senders: Vec<_> = [(left.to_vec(), &bases[0]), (right.to_vec(), &bases[1])]
        .into_iter()
        .map(|(part, base)| {
            let options = ReplayOptions {
                url: base.clone(),
                concurrency: 8,
                progress: false,
            };
            tokio::spawn(async move { replay(part, &options).await.unwrap() })
        })
        .collect();

    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let victim = rand::rng().random_range(0..workers.len());
        workers[victim].kill();
        workers[victim] = nurture("worker", worker_ports[victim], dir.path(), &backends);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let ingest = round % 2;
        ingests[ingest].kill();
        ingests[ingest] = nurture("ingest", ingest_ports[ingest], dir.path(), &backends);
    }
    let mut accepted = 0;
    for sender in senders {
        let posted = sender.await.unwrap();
        assert_eq!((posted.rejected, posted.failed), (0, 0), "{posted:?}");
        accepted += posted.accepted + posted.duplicate;
    }

    assert_eq!(accepted, 3000);
    wait_up(&bases[0]).await;
    let done = wait_for(Duration::from_secs(180), || async {
        stats_of(&bases[0])
            .await
            .is_some_and(|s| s["processed"] == 3000 && s["queue_depth"] == 0)
    })
    .await;
    let stats = stats_of(&bases[0]).await.unwrap();
    assert!(done, "not every lead was processed: {stats}");
    assert_eq!(
        (stats["received"].as_u64(), stats["dead_lettered"].as_u64()),
        (Some(3000), Some(0)),
        "{stats}"
    );
    let sent = stats["by_outcome"]["sent"].as_u64().unwrap();
    let hot = stats["by_track"]["hot"].as_u64().unwrap();
    let emails = outbox_files(dir.path(), "email");
    assert_eq!(
        emails.len() as u64,
        sent,
        "one email per sent lead: {stats}"
    );
    for file in &emails {
        let key = file.file_stem().unwrap().to_string_lossy().to_string();
        let eml = std::fs::read_to_string(file).unwrap();
        assert!(eml.contains(&format!("Message-ID: <{key}@nurture.local>")));
    }
    assert!(outbox_files(dir.path(), "slack").len() as u64 <= hot);

    for mut child in ingests.into_iter().chain(workers) {
        child.kill();
    }
    backends.remove(&nurture::config::Settings::default()).await;
}
