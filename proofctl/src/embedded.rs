//! Embedded mode: the whole pipeline on this machine for one command — a PostgreSQL in a
//! temporary directory, a filesystem artifact store, the dispatcher with its local backend, and
//! the api on a loopback port. The same code as a cluster, minus the cluster.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use proofjobs_api::{server, Intake, Limits};
use proofjobs_dispatcher::{
    local::{default_runner_bin, LocalBackend},
    Dispatcher, Placement, Policy,
};
use proofjobs_pipeline::{
    artifacts::{ArtifactStore, StoreConfig},
    state::{Db, Notifications},
};
use tokio::sync::watch;

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
        let postgres = Postgres::start(&dir.join("pg")).await?;
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
            if let Err(e) = server::serve(intake, n, listener, shutdown).await {
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

/// A throwaway PostgreSQL server. initdb refuses to run as root, so as root it runs as the
/// `postgres` user that Debian's package creates.
struct Postgres {
    data: PathBuf,
    port: u16,
}

fn pg_binary(name: &str) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect()).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin").join(name)).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!("PostgreSQL's {name} not found: embedded mode needs a PostgreSQL server installed (apt-get install postgresql)")
    })
}

fn as_postgres_user(program: &Path, args: &[String]) -> Command {
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root {
        let mut line = shell_quote(&program.display().to_string());
        for arg in args {
            line.push(' ');
            line.push_str(&shell_quote(arg));
        }
        let mut cmd = Command::new("su");
        cmd.args(["postgres", "-s", "/bin/sh", "-c", &line]);
        cmd
    } else {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Postgres {
    async fn start(data: &Path) -> Result<Postgres> {
        let parent = data.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(data)?;
        let socket_dir = parent.join("pgsock");
        std::fs::create_dir_all(&socket_dir)?;
        if unsafe { libc::geteuid() } == 0 {
            // The postgres user must reach and own its directories.
            for dir in [&parent, &data.to_path_buf(), &socket_dir] {
                let status = Command::new("chown").arg("postgres").arg(dir).status()?;
                anyhow::ensure!(status.success(), "chown postgres {} failed", dir.display());
            }
        }
        let initdb = pg_binary("initdb")?;
        let out = as_postgres_user(
            &initdb,
            &["-D".into(), data.display().to_string(), "-A".into(), "trust".into(), "-U".into(), "proofjobs".into(), "--no-sync".into()],
        )
        .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let pg_ctl = pg_binary("pg_ctl")?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} -c fsync=off -c max_connections=200",
            socket_dir.display()
        );
        let out = as_postgres_user(
            &pg_ctl,
            &[
                "-D".into(),
                data.display().to_string(),
                "-l".into(),
                parent.join("postgres.log").display().to_string(),
                "-w".into(),
                "-o".into(),
                options,
                "start".into(),
            ],
        )
        .output()?;
        if !out.status.success() {
            bail!("starting PostgreSQL failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(Postgres { data: data.to_path_buf(), port })
    }

    fn url(&self) -> String {
        format!("postgres://proofjobs@127.0.0.1:{}/postgres", self.port)
    }

    fn stop(&self) {
        if let Ok(pg_ctl) = pg_binary("pg_ctl") {
            let _ =
                as_postgres_user(&pg_ctl, &["-D".into(), self.data.display().to_string(), "-m".into(), "immediate".into(), "stop".into()])
                    .output();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
