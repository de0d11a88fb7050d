//! The `nurture` command: loads settings, sets up logging and metrics, and starts a part.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use nurture::config::QueueKind;
use nurture::config::{Overrides, Settings};
use nurture::queue::{Queue, Role};
use nurture::replay::{ReplayOptions, load_bodies, replay};
use nurture::server::Part;
use nurture::{demo, server, telemetry};

/// AI-assisted lead nurturing: webhook in, durable queue, score, route, write, check, send.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server, the queue and the workers in one process.
    Serve(ServerArgs),
    /// Run only the webhook intake (and the read side); scale out with several.
    Ingest(ServerArgs),
    /// Run only the workers (and the read side, for health and metrics); scale out with
    /// several.
    Worker(ServerArgs),
    /// Create or upgrade the CRM database schema, then exit (also done at every start).
    Migrate(ServerArgs),
    /// Start the embedded default, replay the shipped bank-marketing data through it, and
    /// print a summary.
    Demo {
        #[command(flatten)]
        server: ServerArgs,
        /// CSV (with a built-in mapping) or JSONL file to replay instead of the built-in
        /// bank-marketing rows.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Stop once the summary is printed.
        #[arg(long)]
        exit: bool,
        /// Requests in flight during the replay.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Post leads from a JSONL file, or CSV through a column mapping, to a running server.
    Replay {
        /// JSONL of webhook bodies, or CSV.
        file: PathBuf,
        /// Server base URL or webhook URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Column mapping for CSV (TOML); the shipped ones are picked by header otherwise.
        #[arg(long)]
        mapping: Option<PathBuf>,
        /// Post at most this many leads.
        #[arg(long)]
        limit: Option<usize>,
        /// Requests in flight.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Inspect settings.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Inspect or replay dead-lettered leads of the embedded queue.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print the effective settings (defaults, file, environment, flags) as TOML.
    Show,
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// List dead-lettered leads with their reasons.
    List,
    /// Put dead-lettered leads back in the queue (one event id, or --all).
    Replay {
        /// Event id to replay.
        event_id: Option<String>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args, Clone)]
struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Folder for the queue, the CRM and the outbox [default: ./nurture-data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// TOML settings file (see nurture.example.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

impl ServerArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let overrides = Overrides {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
        };
        Ok(Settings::load(self.config.as_deref(), &overrides)?)
    }
}

async fn run_part(args: ServerArgs, part: Part, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = args.settings()?;
    server::cancel_on_signal(shutdown.clone());
    server::start_part(settings, part, shutdown)
        .await?
        .wait()
        .await
}

async fn dlq(queue: &dyn Queue, action: DlqAction) -> anyhow::Result<()> {
    match action {
        DlqAction::List => {
            for letter in queue.dead_letters(10_000).await? {
                println!(
                    "{}\tattempts={}\t{}",
                    letter.event_id, letter.attempts, letter.reason
                );
            }
        }
        DlqAction::Replay { event_id, .. } => {
            let count = queue.replay_dead(event_id.as_deref()).await?;
            println!("{count} dead letters back in the queue");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_logging();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    match cli.command {
        Command::Serve(args) => run_part(args, Part::All, shutdown).await,
        Command::Ingest(args) => run_part(args, Part::Ingest, shutdown).await,
        Command::Worker(args) => run_part(args, Part::Worker, shutdown).await,
        Command::Migrate(args) => {
            let settings = args.settings()?;
            server::open_store(&settings).await?;
            println!("CRM schema is up to date");
            Ok(())
        }
        Command::Demo {
            server: args,
            file,
            exit,
            concurrency,
        } => {
            let mut settings = args.settings()?;
            if args.data_dir.is_none() {
                settings.data_dir = demo::fresh_data_dir(&settings.data_dir)?;
            } else if settings.data_dir.join("nurture.db").exists() {
                eprintln!(
                    "note: {} holds an earlier run; the summary counts its leads too",
                    settings.data_dir.display()
                );
            }
            server::cancel_on_signal(shutdown.clone());
            let options = demo::DemoOptions {
                file,
                exit,
                concurrency,
                drain_timeout: Duration::from_secs(600),
            };
            demo::run(settings, options, shutdown).await
        }
        Command::Replay {
            file,
            url,
            mapping,
            limit,
            concurrency,
        } => {
            let bodies = load_bodies(&file, mapping.as_deref(), limit)?;
            let options = ReplayOptions {
                url,
                concurrency,
                progress: true,
            };
            let summary = replay(bodies, &options).await?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            if summary.failed > 0 {
                anyhow::bail!("{} leads could not be posted", summary.failed);
            }
            Ok(())
        }
        Command::Config {
            action: ConfigAction::Show,
            server: args,
        } => {
            print!("{}", args.settings()?.to_toml());
            Ok(())
        }
        Command::Dlq {
            action,
            server: args,
        } => {
            if let DlqAction::Replay {
                event_id: None,
                all: false,
            } = action
            {
                anyhow::bail!("name an event id or pass --all");
            }
            let settings = args.settings()?;
            if settings.queue == QueueKind::Embedded
                && !settings.data_dir.join("queue.db").is_file()
            {
                anyhow::bail!(
                    "no queue in '{}' (no queue.db)",
                    settings.data_dir.display()
                );
            }
            let store = server::open_store(&settings).await?;
            let queue =
                server::open_queue(&settings, store, Role::Publish, shutdown.clone()).await?;
            let result = dlq(queue.as_ref(), action).await;
            shutdown.cancel();
            result
        }
    }
}
