//! proofjobs-dispatcher: runs the reconcile loop of a cluster deployment.

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use proofjobs_dispatcher::{
    kubernetes::{job_spec::JobSettings, profiles::StageProfiles, KubeBackend, KubeSettings},
    local::{default_runner_bin, LocalBackend, TASK_RUNNER_VAR},
    Backend, Dispatcher, Placement, Policy,
};
use proofjobs_pipeline::state::{Db, Notifications};

#[derive(Parser)]
#[command(name = "proofjobs-dispatcher")]
struct Args {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Local backend: the artifact store runners use (Kubernetes runners read it from the runner Secret).
    #[arg(long, env = "PROOFJOBS_ARTIFACT_STORE", default_value = "")]
    artifact_store: String,
    /// Where runners run. `local`: child processes of this machine; `kubernetes`: one Job per stage group.
    #[arg(long, env = "PROOFJOBS_BACKEND", default_value = "local")]
    backend: String,
    /// Which stages share a runner: `all`, `per-stage`, or groups such as
    /// `execute,wrap/setup,prove-core,compress,shrink`. Default: `all` locally, `per-stage` on Kubernetes.
    #[arg(long, env = "PROOFJOBS_PLACEMENT")]
    placement: Option<String>,
    /// How long a stage's pods may stay unschedulable (GPU pool scaling from zero) before the proof fails.
    #[arg(long, env = "PROOFJOBS_CAPACITY_WAIT_SECS", default_value_t = 900)]
    capacity_wait_secs: u64,
    /// Runner failures (crashes, kills, hangs) a proof survives.
    #[arg(long, env = "PROOFJOBS_MAX_RUNNER_FAILURES", default_value_t = 3)]
    max_runner_failures: i32,
    /// Hand-backs (runner exit 69 or 75) one stage group of a proof survives.
    #[arg(long, env = "PROOFJOBS_MAX_RUNNER_RETRIES", default_value_t = 20)]
    max_runner_retries: i32,
    /// A runner whose heartbeat is older than this is hung: stopped, its tasks handed on.
    #[arg(long, env = "PROOFJOBS_HUNG_RUNNER_SECS", default_value_t = 120)]
    hung_runner_secs: u64,
    /// Local backend: the task-runner binary (default: next to this one).
    #[arg(long, env = TASK_RUNNER_VAR)]
    task_runner: Option<PathBuf>,
    /// Local backend: where each runner's log goes.
    #[arg(long, env = "PROOFJOBS_LOG_DIR", default_value = "/tmp/proofjobs-runners")]
    log_dir: PathBuf,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(clap::Args)]
struct KubeArgs {
    /// Namespace of the stage Jobs.
    #[arg(long, env = "PROOFJOBS_NAMESPACE", default_value = "proofjobs")]
    namespace: String,
    /// The task-runner image.
    #[arg(long, env = "PROOFJOBS_RUNNER_IMAGE", default_value = "proofjobs/task-runner:latest")]
    runner_image: String,
    #[arg(long, env = "PROOFJOBS_RUNNER_COMMAND", default_value = "/usr/local/bin/task-runner")]
    runner_command: String,
    /// ServiceAccount of runner pods.
    #[arg(long, env = "PROOFJOBS_RUNNER_SERVICE_ACCOUNT")]
    runner_service_account: Option<String>,
    /// Secret with `database-url` and `artifact-store` for runner pods.
    #[arg(long, env = "PROOFJOBS_RUNNER_SECRET", default_value = "proofjobs-runner")]
    runner_secret: String,
    /// Extra non-secret runner environment, `NAME=value` (repeatable).
    #[arg(long = "runner-env", value_parser = parse_env)]
    runner_env: Vec<(String, String)>,
    /// Stage profiles (JSON, usually a mounted ConfigMap); defaults built in.
    #[arg(long, env = "PROOFJOBS_STAGE_PROFILES")]
    stage_profiles: Option<PathBuf>,
    #[arg(long, env = "PROOFJOBS_MAX_GPU_PODS", default_value_t = 16)]
    max_gpu_pods: u32,
    #[arg(long, env = "PROOFJOBS_MAX_PODS_PER_JOB", default_value_t = 4)]
    max_pods_per_job: u32,
    #[arg(long, env = "PROOFJOBS_JOB_TTL_SECS", default_value_t = 3600)]
    job_ttl_secs: i32,
    /// Node directory mounted into runner pods as their recursion-key cache (hostPath; needs a
    /// namespace whose Pod Security allows it). Unset: runners use the cache baked into the image.
    #[arg(long, env = "PROOFJOBS_KEY_CACHE_HOST_PATH")]
    key_cache_host_path: Option<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not NAME=value"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let db = Db::connect(&args.database_url, 8).await?;
    db.migrate().await?;
    let notifications = Notifications::listen(&db).await?;
    let policy = |placement: &str| -> anyhow::Result<Policy> {
        Ok(Policy {
            capacity_wait_limit: Duration::from_secs(args.capacity_wait_secs),
            max_runner_failures: args.max_runner_failures,
            max_runner_retries: args.max_runner_retries,
            hung_after: Duration::from_secs(args.hung_runner_secs),
            ..Policy::new(Placement::parse(args.placement.as_deref().unwrap_or(placement)).map_err(anyhow::Error::msg)?)
        })
    };
    match args.backend.as_str() {
        "local" => {
            anyhow::ensure!(
                !args.artifact_store.is_empty(),
                "--artifact-store (PROOFJOBS_ARTIFACT_STORE) is required with the local backend"
            );
            let policy = policy("all")?;
            let runner_bin = args.task_runner.clone().unwrap_or_else(default_runner_bin);
            let backend =
                LocalBackend::new(runner_bin, args.log_dir.clone(), args.database_url.clone(), args.artifact_store.clone(), vec![])?;
            serve(db, notifications, backend, policy).await
        }
        "kubernetes" => {
            let policy = policy("per-stage")?;
            let profiles = match &args.kube.stage_profiles {
                Some(path) => StageProfiles::load(path)?,
                None => StageProfiles::default(),
            };
            let settings = KubeSettings {
                job: JobSettings {
                    namespace: args.kube.namespace,
                    image: args.kube.runner_image,
                    command: args.kube.runner_command,
                    service_account: args.kube.runner_service_account,
                    runner_secret: args.kube.runner_secret,
                    extra_env: args.kube.runner_env,
                    ttl_after_finished_secs: args.kube.job_ttl_secs,
                    shm_size: "2Gi".into(),
                    key_cache_host_path: args.kube.key_cache_host_path.filter(|p| !p.is_empty()),
                },
                profiles,
                max_gpu_pods: args.kube.max_gpu_pods,
                max_pods_per_job: args.kube.max_pods_per_job,
                hung_after: Duration::from_secs(args.hung_runner_secs),
            };
            // In-cluster config, or KUBECONFIG outside a cluster.
            let client = kube::Client::try_default().await?;
            let backend = KubeBackend::start(client, settings, db.clone()).await?;
            serve(db, notifications, backend, policy).await
        }
        other => anyhow::bail!("unknown backend {other:?} (expected local or kubernetes)"),
    }
}

async fn serve<B: Backend>(db: Db, notifications: Notifications, backend: B, policy: Policy) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    // Runners are left running on exit: the next dispatcher adopts them.
    let result = Dispatcher::new(db.clone(), Arc::new(backend), policy).run(notifications.clone(), stop_rx).await;
    notifications.shutdown().await;
    db.close().await;
    result
}
