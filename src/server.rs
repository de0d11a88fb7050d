//! Assembles the embedded default in one process: queue, store, outbox, pipeline, workers and
//! the HTTP server, all stopped by one shutdown token.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::info;

use crate::ai::points::PointsScorer;
use crate::channels::Outbox;
use crate::config::Settings;
use crate::pipeline::{Composer, Guard, Pipeline, run_workers};
use crate::queue::{EmbeddedQueue, Queue};
use crate::store::{SqliteStore, Store};

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
        self.server
            .await
            .context("server task failed")?
            .context("server failed")?;
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

/// Opens everything under `settings.data_dir` and starts serving; returns once listening.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let data_dir = settings.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir '{}'", data_dir.display()))?;
    let queue: Arc<dyn Queue> =
        Arc::new(EmbeddedQueue::open(&data_dir, settings.worker.clone()).await?);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data_dir).await?);
    let pipeline = Pipeline {
        store: store.clone(),
        scorer: Arc::new(PointsScorer::new(
            settings.score.clone(),
            settings.route.clone(),
        )),
        composer: Composer::new(settings.compose.clone())?,
        guard: Guard::new(settings.guard.clone()).context("invalid guard pattern")?,
        deliverer: Arc::new(Outbox::open(&data_dir, &settings.compose.email_from)?),
        settings: settings.clone(),
    };
    crate::telemetry::prometheus();

    let state = AppState {
        settings: Arc::new(settings.clone()),
        queue: queue.clone(),
        store,
    };
    let app = Router::new()
        .merge(crate::ingest::routes::routes(
            settings.ingest.max_body_bytes,
        ))
        .merge(crate::api::routes::routes())
        .layer(TraceLayer::new_for_http())
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
    let workers = run_workers(
        queue,
        Arc::new(pipeline),
        &settings.worker,
        shutdown.clone(),
    );
    info!(%addr, data_dir = %data_dir.display(), "NurtureStarted");
    Ok(Running {
        addr,
        state,
        shutdown,
        server,
        workers,
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
