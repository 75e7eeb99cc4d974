//! task-runner: the short-lived process of one stage (or a group of stages) of one proof. It
//! claims that stage's tasks from the durable task bus, runs them with the SP1 worker code,
//! writes outputs to the artifact store, and exits when its stages have no more work, so the
//! machine it runs on can go away. Its exit code is the contract in docs/ARCHITECTURE.md,
//! "Exit codes" (`proofjobs_pipeline::exit`).

#[cfg(feature = "cuda")]
mod direct;
mod runner;
mod tasks;

use std::time::Duration;

use clap::Parser;
use proofjobs_pipeline::{exit, stage::parse_stage_list};

#[derive(Parser, Debug)]
#[command(name = "task-runner", about = "Run the tasks of one proof's stage(s), then exit")]
pub struct Args {
    /// The proof whose tasks this runner works on.
    #[arg(long, env = "PROOFJOBS_PROOF_ID")]
    pub proof: String,
    /// Comma-separated stages to serve: execute, setup, prove-core, compress, shrink, wrap.
    #[arg(long, env = "PROOFJOBS_STAGES")]
    pub stages: String,
    /// This runner's id (the dispatcher names it; generated when absent).
    #[arg(long, env = "PROOFJOBS_RUNNER_ID")]
    pub runner_id: Option<String>,
    /// The backend name this runner's row is recorded under (`kubernetes-pod` inside a Job).
    #[arg(long, env = "PROOFJOBS_RUNNER_BACKEND", default_value = "local")]
    pub runner_backend: String,
    /// What identifies this runner's process to its backend (the Job name in a pod; default: pid).
    #[arg(long, env = "PROOFJOBS_RUNNER_HANDLE")]
    pub runner_handle: Option<String>,
    /// PostgreSQL URL of the proofjobs state.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Artifact store: redis://… or file:///path.
    #[arg(long, env = "PROOFJOBS_ARTIFACT_STORE")]
    pub artifact_store: String,
    /// Directory of the recursion-key cache (`off` disables it; default: ~/.cache/proofjobs/sp1-keys).
    #[arg(long, env = "PROOFJOBS_KEY_CACHE")]
    pub key_cache: Option<String>,
    /// Which SP1 prover proves: `cpu`, or `cuda` (SP1's GPU prover; needs the `cuda` build). Every
    /// runner of a proof must be told the same, since the controller shards for it. Default: what
    /// this binary was built for.
    #[arg(long, env = "PROOFJOBS_PROVER")]
    pub prover: Option<proofjobs_task_runner::engine::ProverKind>,
    /// Exit after this long with nothing to do for the runner's stages.
    #[arg(long, env = "PROOFJOBS_IDLE_EXIT_SECS", default_value_t = 5)]
    pub idle_exit_secs: u64,
}

fn main() {
    #[cfg(feature = "cuda")]
    if direct::invoked() {
        std::process::exit(if direct::main() == std::process::ExitCode::SUCCESS { 0 } else { 1 });
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sp1_prover=warn,sp1_core_machine=warn,sp1_core_executor=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::USAGE } else { exit::DONE });
        }
    };
    let stages = match parse_stage_list(&args.stages) {
        Ok(stages) => stages,
        Err(e) => {
            eprintln!("task-runner: {e}");
            std::process::exit(exit::USAGE);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(runner::run(args, stages));
    // Don't wait for blocking prover threads still unwinding: the exit code is the result.
    runtime.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(code);
}
