//! Shared test harness: starts the real server on a free port with a temporary data dir,
//! posts webhooks over HTTP, and waits for conditions with a deadline.
#![allow(dead_code)]

pub mod fake_llm;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nurture::config::{QueueKind, SecretUrl, Settings};
use nurture::server::{self, Running};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A server running in this process on its own data dir.
pub struct TestApp {
    pub base: String,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    pub running: Option<Running>,
    pub backends: Option<Backends>,
}

/// `NURTURE_TEST_BACKEND=production` runs the suite on RabbitMQ and PostgreSQL instead of the
/// embedded default.
pub fn is_production() -> bool {
    std::env::var("NURTURE_TEST_BACKEND").as_deref() == Ok("production")
}

/// A fresh PostgreSQL database and RabbitMQ queue prefix for one test.
#[derive(Debug, Clone)]
pub struct Backends {
    pub database_url: String,
    pub queue_prefix: String,
}

impl Backends {
    /// New names; nothing is created until a process connects.
    pub fn fresh() -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Self {
            database_url: format!("postgres://postgres@127.0.0.1:5432/nurture_t_{id}"),
            queue_prefix: format!("t{id}"),
        }
    }

    /// Points settings at these backends.
    pub fn apply(&self, settings: &mut Settings) {
        settings.queue = QueueKind::Rabbitmq;
        settings.database_url = Some(SecretUrl(self.database_url.clone()));
        settings.rabbitmq.queue_prefix = self.queue_prefix.clone();
    }

    /// The same as environment variables, for child processes.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("NURTURE__QUEUE".into(), "rabbitmq".into()),
            ("NURTURE__DATABASE_URL".into(), self.database_url.clone()),
            (
                "NURTURE__RABBITMQ__QUEUE_PREFIX".into(),
                self.queue_prefix.clone(),
            ),
        ]
    }

    /// Deletes the queues and the database.
    pub async fn remove(&self, settings: &Settings) {
        let mut rabbit = settings.rabbitmq.clone();
        rabbit.queue_prefix = self.queue_prefix.clone();
        let _ = nurture::queue::rabbit::delete_topology(
            settings.amqp_url.expose(),
            &rabbit,
            &settings.worker,
        )
        .await;
        let _ = <sqlx::Postgres as sqlx::migrate::MigrateDatabase>::force_drop_database(
            &self.database_url,
        )
        .await;
    }
}

/// Backends for a test: fresh production ones when asked for, none (embedded) otherwise.
pub fn test_backends() -> Option<Backends> {
    is_production().then(Backends::fresh)
}

/// Settings for a test: port 0, a fresh temp dir, fast polling.
pub fn test_settings(dir: &Path) -> Settings {
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    settings.worker.poll_interval_ms = 20;
    settings
}

impl TestApp {
    /// Starts with default settings, after `adjust` had its say.
    pub async fn start(adjust: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(dir.path());
        let backends = test_backends();
        if let Some(b) = &backends {
            b.apply(&mut settings);
        }
        adjust(&mut settings);
        let running = server::start(settings, CancellationToken::new())
            .await
            .unwrap();
        Self {
            base: format!("http://{}", running.addr),
            dir,
            client: reqwest::Client::new(),
            running: Some(running),
            backends,
        }
    }

    /// Posts raw bytes with a content type; returns status and JSON body (Null if none).
    pub async fn post_raw(&self, body: impl Into<Vec<u8>>, content_type: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/webhook/lead-in", self.base))
            .header("content-type", content_type)
            .body(body.into())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Posts a JSON body.
    pub async fn post(&self, body: &Value) -> (u16, Value) {
        self.post_raw(serde_json::to_vec(body).unwrap(), "application/json")
            .await
    }

    /// GETs a path and parses JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GETs a path as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until `processed + dead_lettered` reaches `count` and the queue is empty.
    pub async fn wait_processed(&self, count: u64) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        let reached = wait_for(Duration::from_secs(60), || async {
            let (_, stats) = self.get("/api/stats").await;
            let done = stats["processed"].as_u64().unwrap_or(0)
                + stats["dead_lettered"].as_u64().unwrap_or(0);
            let ok = done >= count && stats["queue_depth"] == 0;
            *last.lock().unwrap() = stats;
            ok
        })
        .await;
        let last = last.into_inner().unwrap();
        assert!(reached, "pipeline did not reach {count} processed: {last}");
        last
    }

    /// Where a handled event stands, once it has been processed.
    pub async fn processed_event(&self, event_id: &str) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        let reached = wait_for(Duration::from_secs(30), || async {
            let (status, body) = self.get(&format!("/api/events/{event_id}")).await;
            let ok = status == 200 && !body["outcome"].is_null();
            *last.lock().unwrap() = body;
            ok
        })
        .await;
        let last = last.into_inner().unwrap();
        assert!(reached, "event {event_id} was not processed: {last}");
        last
    }

    /// The lead behind a processed event.
    pub async fn lead_of(&self, event_id: &str) -> Value {
        let status = self.processed_event(event_id).await;
        let (code, lead) = self.get(&format!("/api/leads/{}", status["lead_id"])).await;
        assert_eq!(code, 200);
        lead
    }

    /// Files under `outbox/<channel>`.
    pub fn outbox_files(&self, channel: &str) -> Vec<PathBuf> {
        outbox_files(self.dir.path(), channel)
    }

    /// Stops the server and its workers cleanly, and removes production backends.
    pub async fn stop(mut self) {
        let settings = self
            .running
            .as_ref()
            .map(|r| r.state.settings.as_ref().clone());
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
        if let (Some(backends), Some(settings)) = (&self.backends, settings) {
            backends.remove(&settings).await;
        }
    }
}

/// Files under `<data_dir>/outbox/<channel>`, sorted.
pub fn outbox_files(data_dir: &Path, channel: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("outbox").join(channel))
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_for<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `../shared/data/<relative>` beside the repository. In CI its absence fails the test; on a
/// laptop without it the caller skips with a loud line.
pub fn shared_data(relative: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(relative);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "shared data {} is missing in CI",
        path.display()
    );
    eprintln!("SKIPPING: shared data {} is not here", path.display());
    None
}

/// A flat-shorthand lead with marketing consent.
pub fn flat_lead(email: &str) -> Value {
    serde_json::json!({ "email": email, "name": "Test Person", "job_title": "Analyst", "source": "google", "consent": true })
}

/// A free TCP port on loopback (for child processes, which cannot report theirs).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `nurture <part>` as a child process on `port` and `dir`, on the given backends
/// (embedded when `None`), with extra environment variables; its output is discarded.
pub fn spawn_nurture(
    part: &str,
    port: u16,
    dir: &Path,
    backends: Option<&Backends>,
    env: &[(&str, &str)],
) -> Process {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_nurture"))
        .args([part, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .envs(backends.map(Backends::env).unwrap_or_default())
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

/// A child process that is killed when dropped, so a failing test leaves no server behind.
pub struct Process(std::process::Child);

impl Process {
    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET <base>/api/stats`, or `None` while the process is not answering.
pub async fn stats_of(base: &str) -> Option<Value> {
    reqwest::get(format!("{base}/api/stats"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Waits until the process at `base` answers, or fails the test after 30 s.
pub async fn wait_up(base: &str) {
    let up = wait_for(Duration::from_secs(30), || async {
        stats_of(base).await.is_some()
    })
    .await;
    assert!(up, "{base} did not come up");
}
