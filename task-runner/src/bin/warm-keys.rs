//! warm-keys: fill (or check) the recursion-key cache before any runner needs it: at image build
//! time (`RUN warm-keys --key-cache /opt/proofjobs/sp1-keys`), from a node's init step, or before
//! a test. An empty cache is computed and written; a full one is loaded and checked, and any bad
//! entry is computed again. Exit 0 only when every key is cached and verified.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use proofjobs_pipeline::stage::Stage;
use proofjobs_task_runner::provers::{key_cache_root, StageProvers};
use sp1_prover::worker::LocalWorkerClient;
use sp1_prover_types::InMemoryArtifactClient;

#[derive(Parser)]
#[command(about = "Compute or verify the SP1 recursion-key cache")]
struct Args {
    /// Cache directory (default: ~/.cache/proofjobs/sp1-keys).
    #[arg(long, env = "PROOFJOBS_KEY_CACHE")]
    key_cache: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info,sp1_prover=warn")
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let root = key_cache_root(args.key_cache.as_deref()).context("the key cache is off: nothing to warm")?;
    let started = Instant::now();
    let (bus, _) = LocalWorkerClient::init();
    // The stages whose keys exist: compress (compose + deferred) and shrink.
    let provers = StageProvers::new(InMemoryArtifactClient::new(), bus, vec![Stage::Compress, Stage::Shrink], Some(root.clone()));
    provers.ready().await?;
    provers.finish().await;
    let all_cached = provers.all_keys_cached();
    println!(
        "{}: {} in {:.1} s",
        root.display(),
        if all_cached { "every recursion key cached and verified" } else { "some keys could not be cached" },
        started.elapsed().as_secs_f64()
    );
    ensure!(all_cached, "the key cache at {} is incomplete (see the warnings above)", root.display());
    Ok(())
}
