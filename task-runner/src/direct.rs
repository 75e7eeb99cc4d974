//! `sp1-gpu-direct`, the GPU benchmark's baseline: SP1's GPU prover called directly, the way
//! sp1-gpu-prover's own server drives it — one process builds SP1's CUDA worker into a local node,
//! sets the program up and proves it. `proofctl bench --baseline-bin` runs it in a fresh process
//! beside the pipeline and reads the JSON line it prints; the proof it writes (bincode of SP1's
//! `ProofFromNetwork`) is verified and compared there.
//!
//! It is the CUDA task-runner binary started under the name `sp1-gpu-direct` (build-cuda.sh makes
//! the link): a second 300 MB binary carrying the same CUDA kernels would not fit where the GPU
//! machine's files travel.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use clap::Parser;
use sp1_core_executor::SP1Context;
use sp1_core_machine::io::SP1Stdin;
use sp1_prover::worker::SP1LocalNodeBuilder;
use sp1_prover_types::network_base_types::ProofMode;

/// Whether this process was started as `sp1-gpu-direct`.
pub fn invoked() -> bool {
    std::env::args_os().next().and_then(|arg0| std::path::Path::new(&arg0).file_name().map(|n| n == "sp1-gpu-direct")).unwrap_or(false)
}

#[derive(Parser)]
#[command(name = "sp1-gpu-direct", about = "Prove with SP1's GPU prover directly (the benchmark baseline)")]
struct Args {
    #[arg(long)]
    elf: PathBuf,
    /// bincode-serialized `SP1Stdin`.
    #[arg(long)]
    stdin: PathBuf,
    /// core or compressed.
    #[arg(long)]
    mode: String,
    #[arg(long)]
    out: PathBuf,
}

pub fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(prove(Args::parse())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sp1-gpu-direct: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn prove(args: Args) -> Result<()> {
    let started = Instant::now();
    // SP1's CUDA task pool panics without a usable GPU; say what is missing instead.
    let probed = proofjobs_task_runner::gpu::probe();
    proofjobs_task_runner::gpu::choose(&probed, &proofjobs_task_runner::gpu::GpuNeeds::DEFAULT).map_err(anyhow::Error::msg)?;
    let gpu_memory = proofjobs_task_runner::gpu::GpuMemoryPeak::start();
    let elf = std::fs::read(&args.elf).with_context(|| format!("reading {}", args.elf.display()))?;
    let stdin: SP1Stdin = bincode::deserialize(&std::fs::read(&args.stdin)?).context("stdin is not a bincode SP1Stdin")?;
    let mode = match args.mode.as_str() {
        "core" => ProofMode::Core,
        "compressed" => ProofMode::Compressed,
        other => anyhow::bail!("the GPU baseline proves core or compressed, not {other}"),
    };
    let timings = sp1_gpu_cudart::run_in_place(|scope| async move {
        let node = SP1LocalNodeBuilder::from_worker_client_builder(sp1_gpu_prover::cuda_worker_builder(scope).await).build().await?;
        let init_s = started.elapsed().as_secs_f64();
        node.setup(&elf).await?;
        let setup_s = started.elapsed().as_secs_f64() - init_s;
        let proof = node.prove_with_mode(&elf, stdin, SP1Context::default(), mode).await?;
        let total_s = started.elapsed().as_secs_f64();
        std::fs::write(&args.out, bincode::serialize(&proof)?)?;
        anyhow::Ok((init_s, setup_s, total_s))
    })
    .await
    .await
    .map_err(|e| anyhow::anyhow!("CUDA: {e}"))??;
    let (init_s, setup_s, total_s) = timings;
    println!(
        "{}",
        serde_json::json!({
            "init_s": init_s,
            "setup_s": setup_s,
            "total_s": total_s,
            "peak_rss_kb": proofjobs_pipeline::memory::peak_rss_kb(),
            "peak_gpu_mb": gpu_memory.map(|g| g.peak_mb()),
        })
    );
    Ok(())
}
