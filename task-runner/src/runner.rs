//! The claim loop: register, heartbeat, claim tasks of our stages while capacity allows, and
//! decide when to exit. SIGTERM (a deleted pod, a spot notice, a cancel) hands the running tasks
//! back to the queue and exits 75 so the work resumes elsewhere. A runner that proves on a GPU
//! checks its GPU first and exits 69 when the node cannot take the work (`gpu.rs`); it then lives
//! inside one CUDA task, because SP1's CUDA provers keep using the task they were built in.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use proofjobs_pipeline::{
    artifacts::{ArtifactStore, StoreConfig},
    bus::PgBus,
    exit, ids,
    runner_env::RunnerEnv,
    stage::{stage_list, Mode, Stage},
    state::{wait_for, Db, Notifications},
};
use proofjobs_task_runner::{
    engine::ProverKind,
    gpu::{self, GpuNeeds},
    provers::{key_cache_root, Device, StageProvers},
};
use tokio::{signal::unix::SignalKind, sync::Semaphore, task::JoinSet};

use crate::tasks::{Outcome, TaskContext};

/// How often a runner tells the dispatcher it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A runner with nothing to do exits after this long unless told otherwise.
const DEFAULT_IDLE_EXIT: Duration = Duration::from_secs(5);

pub async fn run(args: RunnerEnv, kind: ProverKind) -> i32 {
    let stages = args.stages.clone();
    let runner_id = args.runner_id.clone().unwrap_or_else(ids::new_runner_id);
    let db = match Db::connect_runner(&args.database_url, 8, args.runner_token.as_deref()).await {
        Ok(db) => db,
        Err(e) => {
            tracing::error!("{e:#}");
            return exit::TRANSIENT;
        }
    };
    let store = match ArtifactStore::connect(&args.artifact_store, StoreConfig::default()).await {
        Ok(store) => store,
        Err(e) => {
            tracing::error!("artifact store: {e:#}");
            return exit::TRANSIENT;
        }
    };
    let notifications = match Notifications::listen(&db).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("{e:#}");
            return exit::TRANSIENT;
        }
    };
    let handle = args.handle.clone().unwrap_or_else(|| std::process::id().to_string());
    let registered = async {
        db.register_runner(&runner_id, &args.proof_id, &stages, &args.backend, &handle).await?;
        match args.gpus.filter(|g| *g > 0) {
            Some(gpus) => db.set_runner_gpus(&runner_id, gpus as i32).await,
            None => Ok(()),
        }
    };
    if let Err(e) = registered.await {
        // Refused by the runner role's row-level security: no token, or one for another proof.
        // Retrying cannot help, so the proof fails at once with the cause instead of waiting out
        // its retries.
        if is_permission_denied(&e) {
            tracing::error!(
                "the database refused this runner's rows for proof {}: {} is missing or not this proof's ({e:#})",
                args.proof_id,
                proofjobs_pipeline::runner_env::RUNNER_TOKEN
            );
            return exit::USAGE;
        }
        tracing::error!("registering runner: {e:#}");
        return exit::TRANSIENT;
    }
    tracing::info!(runner = %runner_id, proof = %args.proof_id, stages = %stage_list(&stages), prover = kind.as_str(), "runner started");

    let heartbeat = tokio::spawn({
        let db = db.clone();
        let id = runner_id.clone();
        async move {
            loop {
                if let Err(e) = db.runner_heartbeat(&id).await {
                    tracing::warn!("heartbeat: {e:#}");
                }
                tokio::time::sleep(HEARTBEAT_EVERY).await;
            }
        }
    });

    let on_gpu = kind.proves_on_gpu(&stages);
    let code = match if on_gpu { check_gpu(&db, &runner_id, args.gpu_min_free_gib).await } else { Ok(()) } {
        Err(code) => code,
        Ok(()) => {
            let serve = Serve { args: &args, stages: &stages, runner_id: &runner_id, db: &db, store, notifications: &notifications, kind };
            serve.on_device(on_gpu).await
        }
    };
    heartbeat.abort();
    let error = db.runner_error(&runner_id).await.ok().flatten();
    if let Err(e) = db.runner_exited(&runner_id, Some(code), error.as_deref()).await {
        tracing::warn!("recording exit: {e:#}");
    }
    notifications.shutdown().await;
    db.close().await;
    let peak_rss_mb = proofjobs_pipeline::memory::peak_rss_kb() / 1024;
    tracing::info!(runner = %runner_id, code, peak_rss_mb, "runner exiting");
    code
}

/// Checks this node's GPU before any task is claimed; `Err` is the exit code, the reason recorded.
async fn check_gpu(db: &Db, runner_id: &str, min_free_gib: Option<f64>) -> Result<(), i32> {
    let refuse = |code: i32, reason: String| async move {
        tracing::error!("{reason}");
        let _ = db.set_runner_error(runner_id, &reason).await;
        Err(code)
    };
    if !cfg!(feature = "cuda") {
        let reason = "this stage proves on a GPU (PROOFJOBS_PROVER=cuda) but this task-runner was built without \
                      the `cuda` feature: run GPU stages from the CUDA image"
            .to_string();
        return refuse(exit::USAGE, reason).await;
    }
    let needs = GpuNeeds::with_min_free_gib(min_free_gib);
    let probed = tokio::task::spawn_blocking(gpu::probe).await.unwrap_or_else(|e| Err(format!("probing the GPU panicked: {e}")));
    match gpu::choose(&probed, &needs) {
        Ok(found) => {
            tracing::info!(gpu = %found, "GPU checked: {needs}");
            if let Err(e) = db.set_runner_device(runner_id, &found.to_string()).await {
                tracing::warn!("recording the GPU: {e:#}");
            }
            Ok(())
        }
        Err(reason) => refuse(exit::UNSUITABLE_NODE, reason).await,
    }
}

/// What the claim loop needs, so that it can run inside a CUDA task or without one.
struct Serve<'a> {
    args: &'a RunnerEnv,
    stages: &'a [Stage],
    runner_id: &'a str,
    db: &'a Db,
    store: ArtifactStore,
    notifications: &'a Notifications,
    kind: ProverKind,
}

impl Serve<'_> {
    async fn on_device(self, on_gpu: bool) -> i32 {
        #[cfg(feature = "cuda")]
        if on_gpu {
            let runner_id = self.runner_id.to_string();
            let gpu_memory = gpu::GpuMemoryPeak::start();
            let code = match sp1_gpu_cudart::run_in_place(|scope| self.serve(Device::Gpu(scope))).await.await {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!(runner = %runner_id, "CUDA: {e}");
                    exit::INTERNAL
                }
            };
            if let Some(peak) = gpu_memory {
                tracing::info!(runner = %runner_id, peak_gpu_mb = peak.peak_mb(), "GPU memory");
            }
            return code;
        }
        debug_assert!(!on_gpu, "GPU runners are refused before this without the cuda feature");
        self.serve(Device::Cpu).await
    }

    async fn serve(self, device: Device) -> i32 {
        let Serve { args, stages, runner_id, db, store, notifications, kind } = self;
        let bus = PgBus::new(db.clone(), notifications.clone());
        let key_root = key_cache_root(args.key_cache.as_deref());
        // A controller next to a GPU prover asks SP1 what this card takes; elsewhere it assumes.
        #[cfg(feature = "cuda")]
        let core_opts = match device {
            Device::Gpu(_) => {
                let card = sp1_gpu_prover::local_gpu_opts();
                if card != kind.core_opts() {
                    tracing::warn!(
                        "SP1's shard settings for this GPU differ from the ones CPU-side controllers assume for \
                         CUDA proofs (cards of 30 GB or less): proofs controlled elsewhere may cut shards this GPU \
                         cannot hold"
                    );
                }
                card
            }
            Device::Cpu => kind.core_opts(),
        };
        #[cfg(not(feature = "cuda"))]
        let core_opts = kind.core_opts();
        let on_gpu = !matches!(device, Device::Cpu);
        let provers = StageProvers::with_device(store.clone(), bus, stages.to_vec(), key_root, core_opts, device);
        let ctx = Arc::new(TaskContext::new(runner_id.to_string(), stages.to_vec(), db.clone(), store, provers));
        let claim = claim_loop(args, stages, runner_id, db, notifications, ctx.clone());
        // SP1's CUDA worker takes ~20 s to build (pinned buffers, recursion programs on the device).
        // A GPU runner of a proof that proves starts it at once, while its controller, setup and
        // execution get going, instead of when the first shard arrives.
        let proves = on_gpu && db.get_proof(&args.proof_id).await.ok().flatten().is_some_and(|p| p.mode != Mode::Execute);
        let prefetch = async {
            if proves {
                if let Err(e) = ctx.prefetch_worker().await {
                    tracing::warn!("building the GPU worker ahead of its first task: {e:#}");
                }
            }
            std::future::pending::<()>().await
        };
        // The claim loop decides when the runner ends; an unfinished prefetch is dropped with it.
        let code = tokio::select! {
            code = claim => code,
            _ = prefetch => unreachable!("the prefetch future never ends by itself"),
        };
        let code = if ctx.found_bad_input() { exit::BAD_INPUT } else { code };
        if code != exit::TRANSIENT {
            // Keys computed here are worth minutes to the next runner on this machine.
            let _ = tokio::time::timeout(Duration::from_secs(120), ctx.finish()).await;
        }
        code
    }
}

async fn claim_loop(
    args: &RunnerEnv,
    stages: &[Stage],
    runner_id: &str,
    db: &Db,
    notifications: &Notifications,
    ctx: Arc<TaskContext>,
) -> i32 {
    let capacity: usize = stages.iter().map(|s| s.runner_concurrency()).sum();
    let slots = Arc::new(Semaphore::new(capacity));
    let mut running: JoinSet<Outcome> = JoinSet::new();
    let mut wake = notifications.subscribe();
    let mut idle_since: Option<Instant> = None;
    let idle_exit = args.idle_exit_secs.map(Duration::from_secs).unwrap_or(DEFAULT_IDLE_EXIT);
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt()).expect("SIGINT handler");

    loop {
        // Reap finished tasks; a task that found bad input ends the runner with 65.
        while let Some(done) = running.try_join_next() {
            match done {
                Ok(Outcome::BadInput) => return exit::BAD_INPUT,
                Ok(Outcome::StoreUnavailable) => return hand_back(db, runner_id, &mut running).await,
                Ok(Outcome::Done) => {}
                Err(e) => tracing::error!("task panicked: {e}"),
            }
        }

        let step: Result<bool> = async {
            let proof = db.get_proof(&args.proof_id).await?;
            let Some(proof) = proof else {
                anyhow::bail!("proof {} does not exist", args.proof_id);
            };
            if proof.status.is_terminal() {
                return Ok(true);
            }
            let mut claimed_any = false;
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                match db.claim_task(&args.proof_id, stages, runner_id).await? {
                    Some(task) => {
                        claimed_any = true;
                        idle_since = None;
                        let ctx = ctx.clone();
                        running.spawn(async move {
                            let outcome = ctx.run(task).await;
                            drop(permit);
                            outcome
                        });
                    }
                    None => break,
                }
            }
            if !claimed_any && running.is_empty() && !db.has_open_tasks(&args.proof_id, stages).await? {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= idle_exit {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        .await;
        match step {
            Ok(true) => {
                // Finished or stopped: a task that just found bad input still decides the exit code.
                running.abort_all();
                let mut code = exit::DONE;
                while let Some(done) = running.join_next().await {
                    if let Ok(Outcome::BadInput) = done {
                        code = exit::BAD_INPUT;
                    }
                }
                return code;
            }
            Ok(false) => {}
            Err(e) if proofjobs_pipeline::artifacts::is_transient(&e) || is_db_error(&e) => {
                tracing::error!("state unreachable: {e:#}");
                return exit::TRANSIENT;
            }
            Err(e) => {
                tracing::error!("{e:#}");
                return exit::USAGE;
            }
        }

        tokio::select! {
            _ = wait_for(&mut wake, Some(&args.proof_id), Duration::from_millis(500)) => {}
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok(Outcome::BadInput) => return exit::BAD_INPUT,
                Ok(Outcome::StoreUnavailable) => return hand_back(db, runner_id, &mut running).await,
                _ => {}
            },
            _ = sigterm.recv() => return hand_back(db, runner_id, &mut running).await,
            _ = sigint.recv() => return hand_back(db, runner_id, &mut running).await,
        }
    }
}

async fn hand_back(db: &Db, runner_id: &str, running: &mut JoinSet<Outcome>) -> i32 {
    running.abort_all();
    match db.requeue_runner_tasks(runner_id).await {
        Ok(n) => tracing::warn!("signal received: handed {n} running task(s) back"),
        Err(e) => tracing::error!("handing tasks back: {e:#}"),
    }
    exit::TRANSIENT
}

/// PostgreSQL's insufficient_privilege (42501): a grant or a row-level security policy refused.
fn is_permission_denied(e: &anyhow::Error) -> bool {
    e.chain().any(
        |cause| matches!(cause.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501")),
    )
}

fn is_db_error(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.downcast_ref::<sqlx::Error>().is_some())
}
