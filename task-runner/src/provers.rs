//! What a runner builds before it can run a task, per stage, and nothing more.
//!
//! SP1's `cpu_worker_builder().build()` sets up every prover at once: ~100 s and ~7 GB before the
//! first task, whatever the task. Here each stage gets only its part:
//! - execute (CONTROLLER, CORE_EXECUTE): the controller and a verifier, no prover at all;
//! - setup (SETUP_VKEY): the core shard prover, nothing recursive;
//! - prove-core, compress, shrink, wrap: the SP1 worker, with recursion keys from the key cache
//!   (`key_cache.rs`) loaded only when the stage uses them: prove-core never touches the compose
//!   keys, compress loads them, shrink loads the shrink key.
//!
//! A runner of the CUDA kind (`engine.rs`) builds SP1's CUDA worker instead for those stages; the
//! controller and setup stay as they are.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Instant,
};

use anyhow::Result;
use sp1_core_executor::{Program, SP1CoreOpts};
use sp1_core_machine::riscv::RiscvAir;
use sp1_hypercube::prover::{AirProver, CpuShardProver, ProverSemaphore};
use sp1_prover::{
    recursion::RecursionVks,
    verify::{SP1Verifier, VerifierRecursionVks},
    worker::{SP1Controller, SP1Worker, SP1WorkerBuilder, SP1WorkerConfig, WorkerClient},
    SP1ProverComponents,
};
use sp1_prover_types::{Artifact, ArtifactClient};
use tokio::sync::OnceCell;

use crate::{
    components::{CachedCpuComponents, CpuRecursionProver, CpuWrapProverBuilder},
    engine::ProvingWorker,
    key_cache::{CachedAirProver, KeyStore},
};
use proofjobs_pipeline::stage::Stage;

type CoreAirProver = <CachedCpuComponents as SP1ProverComponents>::CoreProver;
type RecursionAirProver = CachedAirProver<CpuRecursionProver>;

/// Where the key cache lives: `PROOFJOBS_KEY_CACHE`, `off` to disable, else the user cache dir.
pub fn key_cache_root(setting: Option<&str>) -> Option<PathBuf> {
    match setting {
        Some("off") => None,
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => Some(proofjobs_pipeline::cache::cache_dir()?.join("sp1-keys")),
    }
}

/// The SP1 worker with the recursion provers whose keys it caches.
pub struct CachedWorker<A, W> {
    pub worker: SP1Worker<A, W, CachedCpuComponents>,
    compress: Arc<RecursionAirProver>,
    shrink: Arc<RecursionAirProver>,
}

impl<A, W> CachedWorker<A, W> {
    /// The recursion provers whose keys `stages` prove with.
    fn stage_provers(&self, stages: &[Stage]) -> Vec<Arc<RecursionAirProver>> {
        let mut provers = Vec::new();
        if stages.contains(&Stage::Compress) {
            provers.push(self.compress.clone());
        }
        if stages.contains(&Stage::Shrink) {
            provers.push(self.shrink.clone());
        }
        provers
    }

    /// Cache counters of both recursion provers, summed: hits, misses, rejected, loaded, written.
    pub fn cache_counts(&self) -> [usize; 5] {
        let (a, b) = (self.compress.stats().snapshot(), self.shrink.stats().snapshot());
        std::array::from_fn(|i| a[i] + b[i])
    }
}

/// Builds the SP1 worker with cached recursion keys; `key_root: None` computes every key.
pub async fn build_worker<A: ArtifactClient, W: WorkerClient>(artifacts: A, bus: W, key_root: Option<&Path>) -> Result<CachedWorker<A, W>> {
    let machine = RiscvAir::machine();
    let permits = ProverSemaphore::new(4);
    let core_verifier = CachedCpuComponents::core_verifier(machine.clone());
    let core: Arc<CoreAirProver> = Arc::new(CpuShardProver::new(core_verifier.shard_verifier().clone()));
    let store = |label: &str| key_root.map(|root| KeyStore::new(root, label));
    let compress = Arc::new(CachedAirProver::new(
        CpuShardProver::new(CachedCpuComponents::compress_verifier().shard_verifier().clone()),
        store("compress"),
    ));
    let shrink = Arc::new(CachedAirProver::new(
        CpuShardProver::new(CachedCpuComponents::shrink_verifier().shard_verifier().clone()),
        store("shrink"),
    ));
    let worker = SP1WorkerBuilder::<CachedCpuComponents>::new_with_machine(machine)
        .with_artifact_client(artifacts)
        .with_worker_client(bus)
        .with_core_opts(SP1CoreOpts::default())
        .with_core_air_prover(core, permits.clone())
        .with_compress_air_prover(compress.clone(), permits.clone())
        .with_shrink_air_prover(shrink.clone(), permits.clone())
        .with_wrap_air_prover(CpuWrapProverBuilder, permits)
        .build()
        .await?;
    Ok(CachedWorker { worker, compress, shrink })
}

/// The controller alone: it only needs the recursion vk tree's root and size for its verifier.
/// `opts` decide how it shards executions, which must suit the provers that prove the shards.
pub fn build_controller<A: ArtifactClient, W: WorkerClient>(artifacts: A, bus: W, opts: SP1CoreOpts) -> SP1Controller<A, W> {
    let machine = RiscvAir::machine();
    let mut config = SP1WorkerConfig::new(machine.clone());
    config.controller_config.opts = opts;
    let vks = RecursionVks::new(None, config.prover_config.recursion_prover_config.max_compose_arity, true);
    let recursion_vks = VerifierRecursionVks { root: vks.root(), vk_verification: vks.vk_verification(), num_keys: vks.num_keys() };
    let verifier = SP1Verifier::new_with_machine(recursion_vks, machine);
    SP1Controller::new(config.controller_config, artifacts, bus, verifier)
}

/// Where a runner's shard provers run: SP1's CPU provers, or SP1's CUDA provers inside the CUDA
/// task the runner lives in.
#[derive(Clone)]
pub enum Device {
    Cpu,
    #[cfg(feature = "cuda")]
    Gpu(sp1_gpu_cudart::TaskScope),
}

/// Everything a runner may need, each part built on first use by the stage that needs it.
pub struct StageProvers<A, W> {
    artifacts: A,
    bus: W,
    stages: Vec<Stage>,
    key_root: Option<PathBuf>,
    core_opts: SP1CoreOpts,
    device: Device,
    controller: OnceCell<SP1Controller<A, W>>,
    core: OnceLock<Arc<CoreAirProver>>,
    worker: OnceCell<ProvingWorker<A, W>>,
}

impl<A: ArtifactClient, W: WorkerClient> StageProvers<A, W> {
    pub fn new(artifacts: A, bus: W, stages: Vec<Stage>, key_root: Option<PathBuf>) -> Self {
        Self::with_device(artifacts, bus, stages, key_root, SP1CoreOpts::default(), Device::Cpu)
    }

    /// `core_opts`: how the controller shards executions (`ProverKind::core_opts`).
    pub fn with_device(
        artifacts: A,
        bus: W,
        stages: Vec<Stage>,
        key_root: Option<PathBuf>,
        core_opts: SP1CoreOpts,
        device: Device,
    ) -> Self {
        StageProvers {
            artifacts,
            bus,
            stages,
            key_root,
            core_opts,
            device,
            controller: OnceCell::new(),
            core: OnceLock::new(),
            worker: OnceCell::new(),
        }
    }

    pub async fn controller(&self) -> &SP1Controller<A, W> {
        self.controller
            .get_or_init(|| async {
                let started = Instant::now();
                let (artifacts, bus, opts) = (self.artifacts.clone(), self.bus.clone(), self.core_opts.clone());
                let controller =
                    tokio::task::spawn_blocking(move || build_controller(artifacts, bus, opts)).await.expect("building the controller");
                tracing::info!(secs = started.elapsed().as_secs_f64(), "SP1 controller ready");
                controller
            })
            .await
    }

    fn core_prover(&self) -> &Arc<CoreAirProver> {
        self.core.get_or_init(|| {
            let verifier = CachedCpuComponents::core_verifier(RiscvAir::machine());
            Arc::new(CpuShardProver::new(verifier.shard_verifier().clone()))
        })
    }

    /// SETUP_VKEY: the program's verifying key, as SP1's setup worker computes and uploads it.
    pub async fn setup_vkey(&self, elf: &Artifact, output: &Artifact) -> Result<()> {
        let elf: Vec<u8> = self.artifacts.download_program(elf).await?;
        let program = Arc::new(Program::from(&elf).map_err(|e| anyhow::anyhow!("the program is not a valid SP1 RISC-V ELF: {e}"))?);
        let (_pk, vk) = self.core_prover().setup(program, ProverSemaphore::new(1)).await;
        self.artifacts.upload(output, vk).await?;
        Ok(())
    }

    /// The SP1 worker, with the recursion keys of this runner's stages loaded.
    pub async fn worker(&self) -> Result<&ProvingWorker<A, W>> {
        self.worker
            .get_or_try_init(|| async {
                let started = Instant::now();
                match &self.device {
                    Device::Cpu => {
                        tracing::info!(key_cache = ?self.key_root, "building the SP1 worker");
                        let built = build_worker(self.artifacts.clone(), self.bus.clone(), self.key_root.as_deref()).await?;
                        // A runner started for recursion work loads its keys while its first tasks
                        // start (each task waits only for its own key). One that also proves core
                        // shards may be serving a core-mode proof, which never uses them: it loads
                        // them on first use only.
                        if !self.stages.contains(&Stage::ProveCore) {
                            for prover in built.stage_provers(&self.stages) {
                                tokio::spawn(async move { prover.load_all().await });
                            }
                        }
                        let [hits, misses, rejected, loaded, written] = built.cache_counts();
                        tracing::info!(secs = started.elapsed().as_secs_f64(), hits, misses, rejected, loaded, written, "SP1 worker ready");
                        anyhow::Ok(ProvingWorker::Cpu(built))
                    }
                    #[cfg(feature = "cuda")]
                    Device::Gpu(scope) => {
                        tracing::info!("building SP1's CUDA worker");
                        let worker = crate::engine::build_cuda_worker(self.artifacts.clone(), self.bus.clone(), scope.clone()).await?;
                        tracing::info!(secs = started.elapsed().as_secs_f64(), prover = "cuda", "SP1 worker ready");
                        anyhow::Ok(ProvingWorker::Cuda(worker))
                    }
                }
            })
            .await
    }

    /// Whether every recursion key this runner set up is cached and verified (see `CacheStats`).
    pub fn all_keys_cached(&self) -> bool {
        self.cpu_worker().is_some_and(|built| built.compress.stats().all_cached() && built.shrink.stats().all_cached())
    }

    fn cpu_worker(&self) -> Option<&CachedWorker<A, W>> {
        match self.worker.get()? {
            ProvingWorker::Cpu(built) => Some(built),
            #[cfg(feature = "cuda")]
            ProvingWorker::Cuda(_) => None,
        }
    }

    /// Waits for cache entries still being written, so the next runner finds them.
    pub async fn finish(&self) {
        if let Some(built) = self.cpu_worker() {
            built.compress.finish_writes().await;
            built.shrink.finish_writes().await;
        }
    }

    /// Builds what this runner's stages need before their first task, their keys loaded: what
    /// the start-up benchmark measures.
    pub async fn ready(&self) -> Result<Option<[usize; 5]>> {
        let proving = [Stage::ProveCore, Stage::Compress, Stage::Shrink, Stage::Wrap];
        if self.stages.contains(&Stage::Execute) {
            self.controller().await;
        }
        if self.stages.contains(&Stage::Setup) {
            self.core_prover();
        }
        if self.stages.iter().any(|s| proving.contains(s)) {
            self.worker().await?;
            let Some(built) = self.cpu_worker() else {
                return Ok(None);
            };
            for prover in built.stage_provers(&self.stages) {
                prover.load_all().await;
            }
            return Ok(Some(built.cache_counts()));
        }
        Ok(None)
    }
}
