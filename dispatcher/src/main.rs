//! proofjobs-dispatcher: runs the reconcile loop of a cluster deployment.

use std::{path::PathBuf, sync::Arc};

use clap::Parser;
use proofjobs_dispatcher::{local::{default_runner_bin, LocalBackend}, Dispatcher, Placement};
use proofjobs_pipeline::state::{Db, Notifications};

#[derive(Parser)]
#[command(name = "proofjobs-dispatcher")]
struct Args {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "PROOFJOBS_ARTIFACT_STORE")]
    artifact_store: String,
    /// Where runners run. `local`: child processes of this machine.
    #[arg(long, env = "PROOFJOBS_BACKEND", default_value = "local")]
    backend: String,
    /// Which stages share a runner: `all` (one runner per proof) or `per-stage`.
    #[arg(long, env = "PROOFJOBS_PLACEMENT", default_value = "all")]
    placement: String,
    /// Local backend: the task-runner binary (default: next to this one).
    #[arg(long, env = "PROOFJOBS_TASK_RUNNER")]
    task_runner: Option<PathBuf>,
    /// Local backend: where each runner's log goes.
    #[arg(long, env = "PROOFJOBS_LOG_DIR", default_value = "/tmp/proofjobs-runners")]
    log_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let placement = Placement::parse(&args.placement).map_err(anyhow::Error::msg)?;
    let db = Db::connect(&args.database_url, 8).await?;
    db.migrate().await?;
    let notifications = Notifications::listen(&db).await?;
    anyhow::ensure!(args.backend == "local", "unknown backend {:?} (this build has: local)", args.backend);
    let env = vec![
        ("DATABASE_URL".to_string(), args.database_url.clone()),
        ("PROOFJOBS_ARTIFACT_STORE".to_string(), args.artifact_store.clone()),
    ];
    let backend = Arc::new(LocalBackend::new(args.task_runner.unwrap_or_else(default_runner_bin), args.log_dir, env)?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    // Runners are left running on exit: the next dispatcher adopts them.
    Dispatcher::new(db, backend, placement).run(notifications, stop_rx).await
}
