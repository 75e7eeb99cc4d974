//! proofjobs-dispatcher: runs the reconcile loop of a cluster deployment.

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use proofjobs_dispatcher::{
    kubernetes::{
        job_spec::JobSettings,
        leader::{self, LeaseSettings},
        profiles::StageProfiles,
        KubeBackend, KubeSettings,
    },
    local::{default_runner_bin, LocalBackend, TASK_RUNNER_VAR},
    sweep::{Retention, Sweeper},
    Backend, Dispatcher, Placement, Policy,
};
use proofjobs_pipeline::{
    artifacts::{ArtifactStore, StoreConfig},
    state::{Db, Notifications},
};

#[derive(Parser)]
#[command(name = "proofjobs-dispatcher")]
struct Args {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Local backend: the PostgreSQL URL runners connect with (default: --database-url). Give a
    /// role that is a member of `proofjobs_runner` so that each runner reaches only its own
    /// proof's rows (Kubernetes runners read theirs from the runner Secret).
    #[arg(long, env = "PROOFJOBS_RUNNER_DATABASE_URL", hide_env_values = true)]
    runner_database_url: Option<String>,
    /// The artifact store: the one local runners use, and the one the sweep cleans after ended
    /// proofs (Kubernetes: from the Secret; unset there, only rows are purged).
    #[arg(long, env = "PROOFJOBS_ARTIFACT_STORE", default_value = "")]
    artifact_store: String,
    /// How long a program and stdin are kept after the last proof reading them ended.
    #[arg(long, env = "PROOFJOBS_INPUT_RETENTION_SECS", default_value_t = 24 * 3600)]
    input_retention_secs: u64,
    /// How long a finished proof is kept in the store for clients to fetch.
    #[arg(long, env = "PROOFJOBS_PROOF_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    proof_retention_secs: u64,
    /// How long the rows of an ended proof (status, usage, quote) are kept before they are purged.
    #[arg(long, env = "PROOFJOBS_ROW_RETENTION_SECS", default_value_t = 30 * 24 * 3600)]
    row_retention_secs: u64,
    /// Seconds between sweeps of ended proofs.
    #[arg(long, env = "PROOFJOBS_SWEEP_SECS", default_value_t = 30)]
    sweep_secs: u64,
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
    /// Secret with `runner-database-url` and `artifact-store` for runner pods (the api and the
    /// dispatcher read `database-url` and `artifact-store` from the same one).
    #[arg(long, env = "PROOFJOBS_RUNNER_SECRET", default_value = "proofjobs-stores")]
    runner_secret: String,
    /// Extra non-secret runner environment, `NAME=value` (repeatable; in the environment,
    /// comma-separated), e.g. `PROOFJOBS_PROVER=cuda` for a CUDA cluster.
    #[arg(long = "runner-env", env = "PROOFJOBS_RUNNER_ENV", value_delimiter = ',', value_parser = parse_env)]
    runner_env: Vec<(String, String)>,
    /// Stage profiles (JSON, usually a mounted ConfigMap); defaults built in.
    #[arg(long, env = "PROOFJOBS_STAGE_PROFILES")]
    stage_profiles: Option<PathBuf>,
    #[arg(long, env = "PROOFJOBS_MAX_GPU_PODS", default_value_t = 16)]
    max_gpu_pods: u32,
    #[arg(long, env = "PROOFJOBS_MAX_PODS_PER_JOB", default_value_t = 4)]
    max_pods_per_job: u32,
    /// Size limit of each runner pod's /scratch (TMPDIR) emptyDir.
    #[arg(long, env = "PROOFJOBS_RUNNER_SCRATCH_SIZE", default_value = "20Gi")]
    runner_scratch_size: String,
    #[arg(long, env = "PROOFJOBS_JOB_TTL_SECS", default_value_t = 3600)]
    job_ttl_secs: i32,
    /// Node directory mounted into runner pods as their recursion-key cache (hostPath; needs a
    /// namespace whose Pod Security allows it). Unset: runners use the cache baked into the image.
    #[arg(long, env = "PROOFJOBS_KEY_CACHE_HOST_PATH")]
    key_cache_host_path: Option<String>,
    /// Only the holder of a Lease dispatches, so replicas can run side by side (false: this one
    /// always dispatches; run exactly one).
    #[arg(long, env = "PROOFJOBS_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// The Lease, in --namespace.
    #[arg(long, env = "PROOFJOBS_LEASE_NAME", default_value = "proofjobs-dispatcher")]
    lease_name: String,
    /// How long the Lease stays held without renewal: the failover time when a leader dies.
    #[arg(long, env = "PROOFJOBS_LEASE_SECS", default_value_t = 15)]
    lease_secs: u64,
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
    // Checked before anything else, so a bad ConfigMap fails the start, not the first Job.
    let profiles = match (&args.kube.stage_profiles, args.backend.as_str()) {
        (Some(path), "kubernetes") => StageProfiles::load(path)?,
        _ => StageProfiles::default(),
    };
    let db = Db::connect(&args.database_url, 8).await?;
    db.migrate().await?;
    let notifications = Notifications::listen(&db).await?;
    let store = match args.artifact_store.as_str() {
        "" => None,
        url => Some(ArtifactStore::connect(url, StoreConfig::default()).await?),
    };
    if store.is_none() {
        tracing::warn!("no --artifact-store: ended proofs' artifacts are left to the store's own expiry; rows are still purged");
    }
    let sweeper = Sweeper {
        db: db.clone(),
        store,
        retention: Retention {
            inputs: Duration::from_secs(args.input_retention_secs),
            proofs: Duration::from_secs(args.proof_retention_secs),
            rows: Duration::from_secs(args.row_retention_secs),
            every: Duration::from_secs(args.sweep_secs.max(1)),
        },
    };
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
            let runner_database_url = args.runner_database_url.clone().unwrap_or_else(|| args.database_url.clone());
            let backend = LocalBackend::new(runner_bin, args.log_dir.clone(), runner_database_url, args.artifact_store.clone(), vec![])?;
            serve(db, notifications, backend, policy, sweeper, stop_signal()?).await
        }
        "kubernetes" => {
            let policy = policy("per-stage")?;
            let lease = args.kube.leader_elect.then(|| LeaseSettings {
                namespace: args.kube.namespace.clone(),
                name: args.kube.lease_name.clone(),
                identity: leader::default_identity(),
                duration: Duration::from_secs(args.kube.lease_secs.max(3)),
            });
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
                    scratch_size: args.kube.runner_scratch_size,
                    key_cache_host_path: args.kube.key_cache_host_path.filter(|p| !p.is_empty()),
                },
                profiles,
                max_gpu_pods: args.kube.max_gpu_pods,
                max_pods_per_job: args.kube.max_pods_per_job,
                hung_after: Duration::from_secs(args.hung_runner_secs),
            };
            // In-cluster config, or KUBECONFIG outside a cluster.
            let mut config = kube::Config::infer().await?;
            // kube's own retry layer: 429, 503 and 504 are retried with exponential backoff that
            // honours Retry-After (apiserver priority and fairness says when to come back).
            // Every other error reaches the reconcile loop, which backs off per proof with the
            // state in the database (docs/ARCHITECTURE.md, "Retries").
            config.default_retry = true;
            let client = kube::Client::try_from(config)?;
            let stop = stop_signal()?;
            let leadership = match lease {
                Some(lease) => match leader::acquire(client.clone(), lease, &mut stop.clone()).await? {
                    Some(leadership) => Some(leadership),
                    None => return Ok(()),
                },
                None => None,
            };
            let backend = KubeBackend::start(client, settings, db.clone()).await?;
            let Some(leadership) = leadership else { return serve(db, notifications, backend, policy, sweeper, stop).await };
            // Losing the Lease stops dispatching at once; the process then exits non-zero and is
            // restarted as a candidate.
            let (lead_tx, lead_rx) = tokio::sync::watch::channel(false);
            let mut signals = stop.clone();
            let serving = serve(db, notifications, backend, policy, sweeper, lead_rx);
            tokio::pin!(serving);
            let lost = tokio::select! {
                result = &mut serving => {
                    leadership.release().await;
                    return result;
                }
                _ = signals.wait_for(|s| *s) => false,
                _ = leadership.lost() => true,
            };
            let _ = lead_tx.send(true);
            let result = serving.await;
            anyhow::ensure!(!lost, "lost the dispatcher Lease: another replica may lead now");
            leadership.release().await;
            result
        }
        other => anyhow::bail!("unknown backend {other:?} (expected local or kubernetes)"),
    }
}

/// Becomes true on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
fn stop_signal() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    Ok(stop_rx)
}

async fn serve<B: Backend>(
    db: Db,
    notifications: Notifications,
    backend: B,
    policy: Policy,
    sweeper: Sweeper,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The sweep runs only while this dispatcher dispatches (the leader), and stops with it.
    let sweeping = tokio::spawn(sweeper.run(stop.clone()));
    // Runners are left running on exit: the next dispatcher adopts them.
    let result = Dispatcher::new(db.clone(), Arc::new(backend), policy).run(notifications.clone(), stop).await;
    sweeping.abort();
    notifications.shutdown().await;
    db.close().await;
    result
}
