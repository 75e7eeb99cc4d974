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
use proofjobs_pipeline::{
    exit,
    runner_env::{self, RunnerEnv},
};
use proofjobs_task_runner::engine::ProverKind;

/// Every setting is also, and usually, an environment variable of the runner contract
/// (`proofjobs_pipeline::runner_env`); a flag given here wins over its variable.
#[derive(Parser, Debug)]
#[command(name = "task-runner", about = "Run the tasks of one proof's stage(s), then exit")]
struct Args {
    /// The proof whose tasks this runner works on [PROOFJOBS_PROOF_ID].
    #[arg(long)]
    proof: Option<String>,
    /// Comma-separated stages to serve: execute, setup, prove-core, compress, shrink, wrap [PROOFJOBS_STAGES].
    #[arg(long)]
    stages: Option<String>,
    /// This runner's id (the dispatcher names it; generated when absent) [PROOFJOBS_RUNNER_ID].
    #[arg(long)]
    runner_id: Option<String>,
    /// The backend name this runner's row is recorded under (default `local`) [PROOFJOBS_RUNNER_BACKEND].
    #[arg(long)]
    runner_backend: Option<String>,
    /// What identifies this runner's process to its backend (default: pid) [PROOFJOBS_RUNNER_HANDLE].
    #[arg(long)]
    runner_handle: Option<String>,
    /// PostgreSQL URL of the proofjobs state [DATABASE_URL].
    #[arg(long)]
    database_url: Option<String>,
    /// Artifact store: redis://… or file:///path [PROOFJOBS_ARTIFACT_STORE].
    #[arg(long)]
    artifact_store: Option<String>,
    /// Recursion-key cache directory (`off` disables it; default ~/.cache/proofjobs/sp1-keys) [PROOFJOBS_KEY_CACHE].
    #[arg(long)]
    key_cache: Option<String>,
    /// Which SP1 prover proves: `cpu`, or `cuda` (needs the `cuda` build). Every runner of a proof
    /// must be told the same. Default: what this binary was built for [PROOFJOBS_PROVER].
    #[arg(long)]
    prover: Option<String>,
    /// Exit after this many seconds with nothing to do (default 5) [PROOFJOBS_IDLE_EXIT_SECS].
    #[arg(long)]
    idle_exit_secs: Option<u64>,
}

impl Args {
    /// The runner's contract: flags first, then the environment.
    fn contract(&self) -> Result<RunnerEnv, runner_env::EnvError> {
        RunnerEnv::from_vars(|var| {
            let flag = match var {
                runner_env::PROOF_ID => self.proof.clone(),
                runner_env::STAGES => self.stages.clone(),
                runner_env::RUNNER_ID => self.runner_id.clone(),
                runner_env::RUNNER_BACKEND => self.runner_backend.clone(),
                runner_env::RUNNER_HANDLE => self.runner_handle.clone(),
                runner_env::DATABASE_URL => self.database_url.clone(),
                runner_env::ARTIFACT_STORE => self.artifact_store.clone(),
                runner_env::KEY_CACHE => self.key_cache.clone(),
                runner_env::PROVER => self.prover.clone(),
                runner_env::IDLE_EXIT_SECS => self.idle_exit_secs.map(|s| s.to_string()),
                _ => None,
            };
            flag.or_else(|| std::env::var(var).ok())
        })
    }
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
    let contract = match args.contract() {
        Ok(contract) => contract,
        Err(e) => {
            eprintln!("task-runner: {e}");
            std::process::exit(exit::USAGE);
        }
    };
    let prover = match contract.prover.as_deref().map(str::parse::<ProverKind>).transpose() {
        Ok(prover) => prover.unwrap_or(ProverKind::BUILT),
        Err(e) => {
            eprintln!("task-runner: {e}");
            std::process::exit(exit::USAGE);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(runner::run(contract, prover));
    // Don't wait for blocking prover threads still unwinding: the exit code is the result.
    runtime.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(code);
}
