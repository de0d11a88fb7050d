//! Assembles the embedded default in one process: queue, store, outbox, pipeline, workers and
//! the HTTP server, all stopped by one shutdown token.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::{info, warn};

use crate::channels::Outbox;
use crate::config::{QueueKind, Settings};
use crate::pipeline::{Pipeline, run_workers};
use crate::queue::{EmbeddedQueue, Queue, RabbitQueue, Role};
use crate::store::{SqlStore, Store};

/// How long a stopping server waits for open connections.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What every HTTP handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Effective settings.
    pub settings: Arc<Settings>,
    /// The queue ingest writes to.
    pub queue: Arc<dyn Queue>,
    /// The CRM the read side reads.
    pub store: Arc<dyn Store>,
}

/// A running nurture: the server and its workers.
pub struct Running {
    /// Where the HTTP server listens (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Shared with handlers; also useful to callers (the demo reads stats through it).
    pub state: AppState,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    workers: JoinSet<()>,
}

impl Running {
    /// Waits until `shutdown` fires, then lets the server stop accepting and finish its
    /// requests, and every worker finish the lead it holds.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        // Connections still open after the grace period (a client that stalls mid-request)
        // are cut, so a stop never waits on a client.
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(served) => served
                .context("server task failed")?
                .context("server failed")?,
            Err(_) => self.server.abort(),
        }
        while self.workers.join_next().await.is_some() {}
        info!("NurtureStopped");
        Ok(())
    }

    /// Fires the shutdown token and waits for a clean stop.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Which roles a process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Webhook intake, workers and the read side (`nurture serve`).
    All,
    /// Webhook intake and the read side (`nurture ingest`).
    Ingest,
    /// Workers, plus the read side for health and metrics (`nurture worker`).
    Worker,
}

impl Part {
    fn has_workers(self) -> bool {
        self != Part::Ingest
    }

    fn has_intake(self) -> bool {
        self != Part::Worker
    }
}

/// Starts every role in one process (`nurture serve`); returns once listening.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    start_part(settings, Part::All, shutdown).await
}

/// Opens the store and queue the settings name and starts the roles of `part`.
pub async fn start_part(
    settings: Settings,
    part: Part,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let data_dir = settings.data_dir.clone();
    let sql = open_store(&settings).await?;
    let role = if part.has_workers() {
        Role::PublishAndConsume
    } else {
        Role::Publish
    };
    let queue = open_queue(&settings, sql.clone(), role, shutdown.clone()).await?;
    let store: Arc<dyn Store> = sql;
    crate::telemetry::prometheus();

    let state = AppState {
        settings: Arc::new(settings.clone()),
        queue: queue.clone(),
        store: store.clone(),
    };
    let mut app = Router::new().merge(crate::api::routes::routes());
    if part.has_intake() {
        app = app.merge(crate::ingest::routes::routes(
            settings.ingest.max_body_bytes,
        ));
    }
    let request_timeout = std::time::Duration::from_secs(settings.ingest.request_timeout_seconds);
    let app = app
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state.clone());
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    let workers = if part.has_workers() {
        let store: Arc<dyn crate::store::Store> = store;
        let llm = crate::ai::client::connect(
            &settings.llm,
            Arc::new(crate::ai::client::StoreLedger(store.clone())),
        )?;
        if llm.is_some() {
            warn_if_leases_are_short(&settings);
        }
        let deliverer = Arc::new(Outbox::open(&data_dir, &settings.compose.email_from)?);
        let pipeline = Pipeline::new(&settings, store, deliverer, llm)?;
        run_workers(
            queue,
            Arc::new(pipeline),
            &settings.worker,
            shutdown.clone(),
        )
    } else {
        JoinSet::new()
    };
    info!(%addr, ?part, queue = ?settings.queue, data_dir = %data_dir.display(), "NurtureStarted");
    Ok(Running {
        addr,
        state,
        shutdown,
        server,
        workers,
    })
}

/// The embedded queue hands a lead out again when its lease runs out. One lead can spend up
/// to four LLM deadlines (score, re-ask, write, judge) plus two 429 pauses: a shorter lease
/// means a second worker picks the lead up while the first still waits on the model. That
/// is safe (the per-lead lock and the idempotency keys hold) but wasteful, and a lead whose
/// lease keeps running out is dead-lettered. Not an error: a fast local model is fine.
fn warn_if_leases_are_short(settings: &Settings) {
    let llm = &settings.llm;
    let worst = 4 * llm.timeout_seconds + 2 * llm.max_wait_seconds;
    if settings.queue == QueueKind::Embedded && settings.worker.visibility_timeout_seconds <= worst
    {
        warn!(
            visibility_timeout_seconds = settings.worker.visibility_timeout_seconds,
            llm_worst_case_seconds = worst,
            "LeaseShorterThanLlmWorstCase: raise worker.visibility_timeout_seconds above 4 × llm.timeout_seconds + 2 × llm.max_wait_seconds"
        );
    }
}

/// Connects to the CRM database of the settings and runs its migrations.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<SqlStore>> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data dir '{}'", settings.data_dir.display()))?;
    // Workers hold one connection per lead being handled (the per-lead lock) plus one for
    // its writes; ingest needs a few. Documented in README ("Running in production").
    let connections = settings.worker.concurrency as u32 * 2 + 4;
    let store = SqlStore::connect(&settings.effective_database_url(), connections).await?;
    Ok(Arc::new(store))
}

/// Opens the queue of the settings: the embedded one in the data dir, or RabbitMQ with its
/// delivery log in the CRM database.
pub async fn open_queue(
    settings: &Settings,
    store: Arc<SqlStore>,
    role: Role,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<dyn Queue>> {
    Ok(match settings.queue {
        QueueKind::Embedded => {
            Arc::new(EmbeddedQueue::open(&settings.data_dir, settings.worker.clone()).await?)
        }
        QueueKind::Rabbitmq => {
            let url = settings.amqp_url.expose();
            let (rabbit, worker) = (settings.rabbitmq.clone(), settings.worker.clone());
            RabbitQueue::start(url, rabbit, worker, store, role, shutdown).await?
        }
    })
}

/// Fires `token` on Ctrl-C or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler can be installed");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("ShutdownRequested");
        token.cancel();
    });
}
