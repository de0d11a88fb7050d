//! Ingest and worker throughput, as ratios against a baseline measured in the same run.
//!
//! `cargo bench --bench throughput` (RabbitMQ on 127.0.0.1:5672 and PostgreSQL on
//! 127.0.0.1:5432 for the production rows; they are skipped with a line when unreachable).
//!
//! - ingest: leads/s answered 202 and p50/p99 latency of the answer, for a bare axum handler
//!   that parses the same JSON and answers 202 without persisting (the ceiling), the embedded
//!   queue, and RabbitMQ (+ the PostgreSQL delivery log); ingest-only processes, so workers
//!   do not compete for the two cores.
//! - worker: leads/s through the whole pipeline with the built-in scorer, from a pre-filled
//!   queue, for the embedded default and for RabbitMQ + PostgreSQL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use futures::StreamExt;
use nurture::config::{QueueKind, SecretUrl, Settings};
use nurture::server::{Part, start_part};
use tokio_util::sync::CancellationToken;

const LEADS: usize = 4000;
const IN_FLIGHT: usize = 32;

struct Ingest {
    name: &'static str,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn bodies(tag: &str) -> Vec<Vec<u8>> {
    (0..LEADS)
        .map(|i| {
            let body = serde_json::json!({
                "email": format!("bench-{tag}-{i}@example.com"), "name": "Bench Lead",
                "job_title": "Head of Growth", "source": "google", "consent": true,
                "answers": { "company_size": "51-200", "message": "Need a demo" },
                "behaviour": { "total_visits": 4, "total_time_on_site_s": 300 }
            });
            serde_json::to_vec(&body).unwrap()
        })
        .collect()
}

async fn load(name: &'static str, addr: SocketAddr, bodies: Vec<Vec<u8>>) -> Ingest {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/webhook/lead-in");
    let started = Instant::now();
    let mut latencies: Vec<f64> = futures::stream::iter(bodies)
        .map(|body| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let sent = Instant::now();
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                assert_eq!(
                    response.map(|r| r.status().as_u16()).ok(),
                    Some(202),
                    "{name}: not accepted"
                );
                sent.elapsed().as_secs_f64() * 1000.0
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    Ingest {
        name,
        per_second: LEADS as f64 / elapsed,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

async fn bare_axum() -> Ingest {
    async fn accept(body: Bytes) -> StatusCode {
        let parsed = nurture::ingest::parse_body(&body, 4000).unwrap();
        let event = nurture::lead::LeadEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            received_at_ms: 0,
            lead: parsed.lead,
        };
        std::hint::black_box(serde_json::to_vec(&event).unwrap());
        StatusCode::ACCEPTED
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/webhook/lead-in", post(accept));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let result = load("bare axum (no persistence)", addr, bodies("bare")).await;
    server.abort();
    result
}

fn settings(dir: &std::path::Path, production: Option<&str>) -> Settings {
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    if let Some(id) = production {
        settings.queue = QueueKind::Rabbitmq;
        settings.database_url = Some(SecretUrl(format!(
            "postgres://postgres@127.0.0.1:5432/nurture_bench_{id}"
        )));
        settings.rabbitmq.queue_prefix = format!("bench{id}");
    }
    settings
}

/// Ingest-only measurement, then a worker draining what was queued.
async fn run(name: &'static str, production: bool) -> (Ingest, f64) {
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::now_v7().simple().to_string();
    let settings = settings(dir.path(), production.then_some(id.as_str()));
    let stop = CancellationToken::new();
    let ingest = start_part(settings.clone(), Part::Ingest, stop.clone())
        .await
        .unwrap();
    let measured = load(name, ingest.addr, bodies(&id)).await;

    let started = Instant::now();
    let worker = start_part(settings.clone(), Part::Worker, stop.clone())
        .await
        .unwrap();
    loop {
        let stats = nurture::api::collect_stats(&worker.state).await.unwrap();
        if stats.processed as usize >= LEADS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker_rate = LEADS as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    ingest.wait().await.unwrap();
    worker.wait().await.unwrap();
    if production {
        let url = settings.database_url.as_ref().unwrap().expose().to_owned();
        let _ = nurture::queue::rabbit::delete_topology(
            settings.amqp_url.expose(),
            &settings.rabbitmq,
            &settings.worker,
        )
        .await;
        let _ = <sqlx::Postgres as sqlx::migrate::MigrateDatabase>::force_drop_database(&url).await;
    }
    (measured, worker_rate)
}

async fn services_up() -> bool {
    let reachable = |port| async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    };
    reachable(5432).await && reachable(5672).await
}

#[tokio::main]
async fn main() {
    println!(
        "{LEADS} leads per run, {IN_FLIGHT} requests in flight, release build, this machine\n"
    );
    let bare = bare_axum().await;
    let (embedded, embedded_workers) =
        run("embedded queue (SQLite, synchronous=FULL)", false).await;
    let production = if services_up().await {
        Some(run("RabbitMQ quorum queue + PostgreSQL delivery log", true).await)
    } else {
        println!("SKIPPED the RabbitMQ + PostgreSQL rows: services not reachable on 127.0.0.1");
        None
    };

    println!("| ingest | accepted leads/s | vs bare axum | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    let mut rows = vec![&bare, &embedded];
    if let Some((p, _)) = &production {
        rows.push(p);
    }
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.name,
            r.per_second,
            r.per_second / bare.per_second,
            r.p50_ms,
            r.p99_ms
        );
    }
    println!("\n| worker (built-in scorer, 4 tasks) | leads/s | vs embedded |");
    println!("|---|---|---|");
    println!("| embedded (SQLite queue and CRM) | {embedded_workers:.0} | 1.00 |");
    if let Some((_, rate)) = production {
        println!(
            "| RabbitMQ + PostgreSQL | {rate:.0} | {:.2} |",
            rate / embedded_workers
        );
    }
}
