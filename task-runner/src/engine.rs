//! Which SP1 prover a runner proves with — SP1's CPU prover (with our recursion-key cache) or SP1's
//! CUDA prover (`sp1-gpu-prover`, the `cuda` feature) — and the one place the tasks reach it.
//!
//! Both are plugged into the same `SP1Worker` through SP1's `SP1ProverComponents`, so a task runs
//! the same code, reads the same artifacts and writes the same outputs whichever proves it. What
//! differs is SP1's core options (`core_opts`): the GPU prover generates the global chip's
//! dependencies its own way and, on cards of 30 GB or less, wants smaller shards. The controller
//! that cuts an execution into shards must cut them for the provers that prove them, even when it
//! runs on a CPU node, so every runner of a proof is told the kind (`PROOFJOBS_PROVER`).

use std::str::FromStr;

use anyhow::Result;
use sp1_core_executor::SP1CoreOpts;
use sp1_prover::worker::{RawTaskRequest, TaskError, WorkerClient};
use sp1_prover_types::ArtifactClient;

use crate::provers::CachedWorker;
use proofjobs_pipeline::{runner_env, stage::Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProverKind {
    Cpu,
    Cuda,
}

impl ProverKind {
    /// What a runner proves with when nobody says: what it was built for.
    pub const BUILT: ProverKind = if cfg!(feature = "cuda") { ProverKind::Cuda } else { ProverKind::Cpu };

    pub fn as_str(self) -> &'static str {
        match self {
            ProverKind::Cpu => "cpu",
            ProverKind::Cuda => "cuda",
        }
    }

    /// Whether a runner serving `stages` proves on its GPU. Only SP1's shard provers (core shards,
    /// recursion, shrink) run there; the controller, setup and the SNARK wrap stay on the CPU, so
    /// their runners need no GPU even in a CUDA cluster.
    pub fn proves_on_gpu(self, stages: &[Stage]) -> bool {
        self == ProverKind::Cuda && stages.iter().any(|s| matches!(s, Stage::ProveCore | Stage::Compress | Stage::Shrink))
    }

    /// How the controller shards executions for this kind of prover.
    pub fn core_opts(self) -> SP1CoreOpts {
        match self {
            ProverKind::Cpu => SP1CoreOpts::default(),
            ProverKind::Cuda => gpu_core_opts(),
        }
    }
}

impl FromStr for ProverKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "cpu" => Ok(ProverKind::Cpu),
            "cuda" => Ok(ProverKind::Cuda),
            other => Err(format!("{} / --prover takes cpu or cuda, not {other:?}", runner_env::PROVER)),
        }
    }
}

/// SP1's GPU shard settings for cards over 30 GB, as `sp1_gpu_prover::local_gpu_opts` chooses them
/// on such a card, for controllers that run where there is no GPU to ask. A GPU runner compares
/// this with SP1's own answer on its card at start and warns when they differ.
pub fn gpu_core_opts() -> SP1CoreOpts {
    let defaults = SP1CoreOpts::default();
    let mut opts =
        SP1CoreOpts { shard_size: 1 << 24, global_dependencies_opt: true, recompute_gkr_trace: false, drop_ldes: false, ..defaults };
    opts.sharding_threshold.element_threshold = sp1_core_executor::ELEMENT_THRESHOLD;
    opts
}

/// The SP1 worker a runner's proving tasks go through.
pub enum ProvingWorker<A, W> {
    Cpu(CachedWorker<A, W>),
    #[cfg(feature = "cuda")]
    Cuda(sp1_prover::worker::SP1Worker<A, W, sp1_gpu_prover::SP1CudaProverComponents>),
}

/// Runs `$body` with `$engine` bound to the worker's prover engine, whichever prover it has.
macro_rules! with_engine {
    ($worker:expr, $engine:ident => $body:expr) => {
        match $worker {
            ProvingWorker::Cpu(w) => {
                let $engine = w.worker.prover_engine();
                $body
            }
            #[cfg(feature = "cuda")]
            ProvingWorker::Cuda(w) => {
                let $engine = w.prover_engine();
                $body
            }
        }
    };
}

fn aborted(what: &str, e: impl std::fmt::Display) -> TaskError {
    TaskError::Fatal(anyhow::anyhow!("{what} task aborted: {e}"))
}

impl<A: ArtifactClient, W: WorkerClient> ProvingWorker<A, W> {
    pub async fn prove_shard(&self, raw: RawTaskRequest, store: &A) -> Result<(), TaskError> {
        with_engine!(self, engine => {
            let result = engine.submit_prove_core_shard(raw.clone()).await?.await.map_err(|e| aborted("shard", e))?;
            raw.recover_prove_shard_if_complete(result, store).await.map(drop)
        })
    }

    pub async fn recursion_reduce(&self, raw: RawTaskRequest, store: &A) -> Result<(), TaskError> {
        with_engine!(self, engine => {
            let result = engine.submit_recursion_reduce(raw.clone()).await?.await.map_err(|e| aborted("reduce", e))?;
            raw.recover_if_complete(result, store).await.map(drop)
        })
    }

    pub async fn prove_deferred(&self, raw: RawTaskRequest) -> Result<(), TaskError> {
        with_engine!(self, engine => {
            engine.submit_prove_deferred(raw).await?.await.map_err(|e| aborted("deferred", e))??;
            Ok(())
        })
    }

    pub async fn shrink_wrap(&self, raw: RawTaskRequest) -> Result<(), TaskError> {
        with_engine!(self, engine => { engine.run_shrink_wrap(raw).await?; Ok(()) })
    }

    pub async fn plonk(&self, raw: RawTaskRequest) -> Result<(), TaskError> {
        with_engine!(self, engine => { engine.run_plonk(raw).await?; Ok(()) })
    }

    pub async fn groth16(&self, raw: RawTaskRequest) -> Result<(), TaskError> {
        with_engine!(self, engine => { engine.run_groth16(raw).await?; Ok(()) })
    }
}

/// SP1's CUDA worker on this process's GPU. `scope` is the CUDA task the runner's whole life runs
/// in (`sp1_gpu_cudart::run_in_place`): SP1's provers keep using it after they are built.
#[cfg(feature = "cuda")]
pub async fn build_cuda_worker<A: ArtifactClient, W: WorkerClient>(
    artifacts: A,
    bus: W,
    scope: sp1_gpu_cudart::TaskScope,
) -> Result<sp1_prover::worker::SP1Worker<A, W, sp1_gpu_prover::SP1CudaProverComponents>> {
    sp1_gpu_prover::cuda_worker_builder(scope).await.with_artifact_client(artifacts).with_worker_client(bus).build().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shard_proving_stages_need_the_gpu() {
        use Stage::*;
        assert!(ProverKind::Cuda.proves_on_gpu(&[ProveCore]));
        assert!(ProverKind::Cuda.proves_on_gpu(&[Execute, Setup, ProveCore, Compress, Shrink, Wrap]));
        assert!(ProverKind::Cuda.proves_on_gpu(&[Compress]));
        assert!(!ProverKind::Cuda.proves_on_gpu(&[Execute]));
        assert!(!ProverKind::Cuda.proves_on_gpu(&[Setup]));
        assert!(!ProverKind::Cuda.proves_on_gpu(&[Wrap]));
        assert!(!ProverKind::Cpu.proves_on_gpu(&[ProveCore, Compress, Shrink]));
    }

    #[test]
    fn kinds_parse_and_name_the_variable_when_wrong() {
        assert_eq!("cuda".parse::<ProverKind>(), Ok(ProverKind::Cuda));
        assert_eq!(" cpu ".parse::<ProverKind>(), Ok(ProverKind::Cpu));
        assert!("gpu".parse::<ProverKind>().unwrap_err().contains(runner_env::PROVER));
    }

    #[test]
    fn cuda_proofs_use_sp1s_gpu_settings() {
        let (cpu, gpu) = (ProverKind::Cpu.core_opts(), ProverKind::Cuda.core_opts());
        assert_eq!(gpu.shard_size, 1 << 24);
        assert_eq!(gpu.sharding_threshold.element_threshold, sp1_core_executor::ELEMENT_THRESHOLD);
        assert!(gpu.global_dependencies_opt && !cpu.global_dependencies_opt);
        assert_ne!(cpu, gpu);
    }
}
