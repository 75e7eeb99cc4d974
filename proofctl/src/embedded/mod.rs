//! Embedded mode: the whole pipeline on this machine for one command — a throwaway PostgreSQL
//! (postgres.rs), a filesystem artifact store, the dispatcher with its local backend, and
//! the api on a loopback port. The same code as a cluster, minus the cluster.

mod postgres;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use proofjobs_api::{auth::Auth, server, Intake, Limits};
use proofjobs_dispatcher::{
    local::{default_runner_bin, LocalBackend},
    Dispatcher, Placement, Policy,
};
use proofjobs_pipeline::{
    artifacts::{ArtifactStore, StoreConfig},
    state::{Db, Notifications},
};
use tokio::sync::watch;

use self::postgres::Postgres;

pub struct Embedded {
    pub endpoint: String,
    pub dir: PathBuf,
    backend: Arc<LocalBackend>,
    stop: watch::Sender<bool>,
    db: Db,
    notifications: Notifications,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    postgres: Postgres,
    keep: bool,
}

impl Embedded {
    pub async fn start(keep: bool) -> Result<Embedded> {
        let dir = tempfile::Builder::new().prefix("proofjobs-").tempdir()?.keep();
        let postgres = Postgres::start(&dir, keep).await?;
        let database_url = postgres.url();
        let db = Db::connect(&database_url, 16).await?;
        db.migrate().await?;
        let store_url = format!("file://{}", dir.join("artifacts").display());
        let store = ArtifactStore::connect(&store_url, StoreConfig::default()).await?;
        let notifications = Notifications::listen(&db).await?;
        let backend = Arc::new(LocalBackend::new(default_runner_bin(), dir.join("logs"), database_url.clone(), store_url, vec![])?);
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let dispatcher = Dispatcher::new(db.clone(), backend.clone(), Policy::new(Placement::single_runner()));
        let n = notifications.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = dispatcher.run(n, stop_rx).await {
                tracing::error!("dispatcher: {e:#}");
            }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let mut api_stop = stop.subscribe();
        let intake = Intake::new(db.clone(), store, Limits::default());
        let n = notifications.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = api_stop.changed().await;
            };
            // A loopback port that lives as long as this command: no keys, no TLS.
            let guard = server::Guard { auth: Auth::Disabled, tls: None, network: None };
            if let Err(e) = server::serve(intake, n, listener, guard, shutdown).await {
                tracing::error!("api: {e:#}");
            }
        }));
        Ok(Embedded { endpoint, dir, backend, stop, tasks, db, notifications, postgres, keep })
    }

    pub fn runner_logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Stops everything in the order it depends on each other: the dispatcher and the api (no
    /// new runners, no new requests), the runners, the notification listener, the connection
    /// pool, and only then PostgreSQL — so nothing is left talking to a database that is gone.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.backend.shutdown().await;
        self.notifications.shutdown().await;
        self.db.close().await;
        self.postgres.stop();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
