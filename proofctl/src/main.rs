//! proofctl: the command line for proofjobs. `prove` runs a whole proof on this machine (embedded
//! mode) unless `--api` points at a cluster; the other commands talk to an api.

mod admin;
mod bench;
mod checks;
mod client;
mod embedded;
mod inputs;

use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use proofjobs_api::proto::{CancelRequest, Estimate, GetRequest, ListRequest, Proof, QuoteCheck, QuoteResponse};

#[derive(Parser)]
#[command(name = "proofctl", version, about = "Submit, follow and verify SP1 proofs on proofjobs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The API key for a cluster's api (created with `proofctl admin keys create`).
    #[arg(long, global = true, env = "PROOFJOBS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM CA certificate for an api served over TLS (https://...), when a private CA signed it.
    #[arg(long, global = true, env = "PROOFJOBS_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
pub struct ProveArgs {
    /// The program: a raw RISC-V ELF (`.zst` accepted).
    #[arg(long)]
    elf: PathBuf,
    /// Its input: a bincode-serialized SP1Stdin (`.zst` accepted). Empty input when absent.
    #[arg(long)]
    stdin: Option<PathBuf>,
    /// execute | core | compressed | plonk | groth16
    #[arg(long, default_value = "compressed")]
    mode: String,
    /// Where the proof is written (sp1-sdk's SP1ProofWithPublicValues::save format).
    #[arg(long, default_value = "proof.bin")]
    out: PathBuf,
    /// Deadline in seconds from now (0: the server's default).
    #[arg(long, default_value_t = 0)]
    deadline_secs: u64,
    /// Fail the proof when the program runs longer than this many cycles (0: no limit).
    #[arg(long, default_value_t = 0)]
    cycle_limit: u64,
    /// A repeated key returns the earlier proof instead of a new one.
    #[arg(long, default_value = "")]
    idempotency_key: String,
    /// The id `proofctl quote` printed for this program and mode: `get` then shows the quote's
    /// estimate next to what the proof took.
    #[arg(long, default_value = "")]
    quote: String,
    /// Print progress as log lines instead of bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Prove a program: on this machine (embedded mode), or on a cluster with --api.
    Prove {
        #[command(flatten)]
        args: ProveArgs,
        /// A proofjobs api (http://host:50051). Without it the whole pipeline runs here.
        #[arg(long, env = "PROOFJOBS_API")]
        api: Option<String>,
        /// Embedded mode: keep the state directory (database, artifacts, runner logs).
        #[arg(long)]
        keep: bool,
    },
    /// Submit a proof to a cluster and print its id.
    Submit {
        #[command(flatten)]
        args: ProveArgs,
        #[arg(long, env = "PROOFJOBS_API")]
        api: String,
    },
    /// Execute a program on a cluster and estimate what proving it in --mode would take (time,
    /// task- and runner-seconds, cost), from the cluster's own completed proofs.
    Quote {
        #[command(flatten)]
        args: ProveArgs,
        #[arg(long, env = "PROOFJOBS_API")]
        api: String,
    },
    /// Follow a proof's stages until it finishes.
    Watch {
        proof_id: String,
        #[arg(long, env = "PROOFJOBS_API")]
        api: String,
        #[arg(long)]
        quiet: bool,
    },
    /// Show a proof; with --out, also download it.
    Get {
        proof_id: String,
        #[arg(long, env = "PROOFJOBS_API")]
        api: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Cancel a proof.
    Cancel {
        proof_id: String,
        #[arg(long, env = "PROOFJOBS_API")]
        api: String,
    },
    /// List proofs.
    List {
        #[arg(long, env = "PROOFJOBS_API")]
        api: String,
        /// Only these statuses (pending, running, completed, failed, cancelled).
        #[arg(long)]
        status: Vec<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Verify a proof file against a program with the stock sp1-sdk verifier.
    Verify {
        #[arg(long)]
        elf: PathBuf,
        #[arg(long)]
        proof: PathBuf,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Operator commands (API keys, quotas), run against the cluster's database.
    Admin(admin::AdminArgs),
    /// Write an in-repo example program and its input to files.
    #[command(subcommand)]
    Example(ExampleCommand),
}

#[derive(Subcommand)]
enum ExampleCommand {
    /// The Fibonacci guest, with an input that runs about <mcycles> million cycles.
    Fibonacci {
        #[arg(long, default_value_t = 1.0)]
        mcycles: f64,
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,sqlx=error".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    client::configure(client::Access { api_key: cli.api_key, ca_file: cli.ca_file });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run(cli.command));
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Prove { args, api, keep } => {
            let proof = match api {
                Some(api) => prove_remote(&api, &args).await?,
                None => prove_embedded(&args, keep).await?,
            };
            report(&proof, &args)
        }
        Command::Submit { args, api } => {
            let mut client = client::connect(&api).await?;
            let (program, stdin) = inputs::load(&args.elf, args.stdin.as_deref())?;
            let id = client::submit(&mut client, submission(&args), program, stdin).await?;
            println!("{id}");
            Ok(())
        }
        Command::Quote { args, api } => {
            let mut client = client::connect(&api).await?;
            let (program, stdin) = inputs::load(&args.elf, args.stdin.as_deref())?;
            let quote = client::quote(&mut client, submission(&args), program, stdin).await?;
            print_quote(&quote);
            Ok(())
        }
        Command::Watch { proof_id, api, quiet } => {
            let mut client = client::connect(&api).await?;
            let proof = client::watch(&mut client, &proof_id, quiet).await?;
            print_proof(&proof);
            Ok(())
        }
        Command::Get { proof_id, api, out } => {
            let mut client = client::connect(&api).await?;
            let proof = client.get(GetRequest { proof_id: proof_id.clone() }).await.map_err(client::status_error)?.into_inner();
            print_proof(&proof);
            if let Some(out) = out {
                let (n, delivery) = client::download_proof(&mut client, &proof_id, &out).await?;
                let via = if delivery == client::Delivery::DownloadUrl { ", from its download URL" } else { "" };
                println!("proof written to {} ({n} bytes{via})", out.display());
            }
            Ok(())
        }
        Command::Cancel { proof_id, api } => {
            let mut client = client::connect(&api).await?;
            let r = client.cancel(CancelRequest { proof_id: proof_id.clone() }).await.map_err(client::status_error)?;
            println!("{proof_id}: {}", r.into_inner().status);
            Ok(())
        }
        Command::List { api, status, limit } => {
            let mut client = client::connect(&api).await?;
            let r = client.list(ListRequest { statuses: status, limit, offset: 0 }).await.map_err(client::status_error)?;
            println!("{:<40} {:<11} {:<10} {:>12}  CAUSE", "ID", "MODE", "STATUS", "CYCLES");
            for p in r.into_inner().proofs {
                let status = if p.waiting.is_empty() { p.status.clone() } else { format!("{} ({})", p.status, p.waiting) };
                println!("{:<40} {:<11} {:<10} {:>12}  {}", p.id, p.mode, status, p.cycles, p.failure_cause);
            }
            Ok(())
        }
        Command::Verify { elf, proof } => verify(&elf, &proof).await,
        Command::Bench(command) => bench::run(command).await,
        Command::Admin(command) => admin::run(command).await,
        Command::Example(ExampleCommand::Fibonacci { mcycles, out_dir }) => {
            let n = proofjobs_guests::fibonacci_n_for_cycles((mcycles * 1e6) as u64);
            std::fs::create_dir_all(&out_dir)?;
            std::fs::write(out_dir.join("fibonacci.elf"), proofjobs_guests::FIBONACCI_ELF)?;
            std::fs::write(out_dir.join("fibonacci-stdin.bin"), bincode::serialize(&bench::fibonacci_stdin(n))?)?;
            println!("wrote {0}/fibonacci.elf and {0}/fibonacci-stdin.bin (n = {n})", out_dir.display());
            Ok(())
        }
    }
}

fn submission(args: &ProveArgs) -> client::Submission {
    let deadline = if args.deadline_secs == 0 {
        0
    } else {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + args.deadline_secs
    };
    client::Submission {
        mode: args.mode.clone(),
        deadline,
        cycle_limit: args.cycle_limit,
        idempotency_key: args.idempotency_key.clone(),
        quote_id: args.quote.clone(),
    }
}

async fn prove_remote(api: &str, args: &ProveArgs) -> Result<Proof> {
    let mut client = client::connect(api).await?;
    let (program, stdin) = inputs::load(&args.elf, args.stdin.as_deref())?;
    let id = client::submit(&mut client, submission(args), program, stdin).await?;
    eprintln!("submitted {id}");
    let proof = client::watch(&mut client, &id, args.quiet).await?;
    if proof.status == "completed" && args.mode != "execute" {
        client::download_proof(&mut client, &id, &args.out).await?;
    }
    Ok(proof)
}

/// An embedded proof, and how long its runner took to build the SP1 worker (from its log).
pub struct EmbeddedRun {
    pub proof: Proof,
    /// From the start of embedded mode to the proof downloaded (teardown excluded).
    pub proof_secs: f64,
    pub worker_init_secs: Option<f64>,
    /// The largest runner's peak RSS, from its exit line.
    pub runner_peak_rss_mb: Option<u64>,
    /// The largest peak of GPU memory in use while a GPU runner ran.
    pub runner_peak_gpu_mb: Option<u64>,
}

pub async fn prove_embedded(args: &ProveArgs, keep: bool) -> Result<Proof> {
    Ok(prove_embedded_measured(args, keep).await?.proof)
}

pub async fn prove_embedded_measured(args: &ProveArgs, keep: bool) -> Result<EmbeddedRun> {
    let (program, stdin) = inputs::load(&args.elf, args.stdin.as_deref())?;
    let started = Instant::now();
    let env = embedded::Embedded::start(keep).await.context("starting embedded mode")?;
    let endpoint = env.endpoint.clone();
    let logs = env.runner_logs();
    let outcome = async {
        let mut client = client::connect(&endpoint).await?;
        let id = client::submit(&mut client, submission(args), program, stdin).await?;
        eprintln!("embedded: proof {id} (runner logs in {})", logs.display());
        let proof = tokio::select! {
            proof = client::watch(&mut client, &id, args.quiet) => proof?,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        };
        if proof.status == "completed" && args.mode != "execute" {
            client::download_proof(&mut client, &id, &args.out).await?;
        }
        Ok((proof, started.elapsed().as_secs_f64()))
    }
    .await;
    // Runners exit on their own a few seconds after their proof; their last lines (peak memory)
    // are what the benchmark reads, so give them that long before stopping them.
    for _ in 0..100 {
        let running = std::fs::read_dir(&logs)
            .map(|entries| entries.flatten().any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| !t.contains("runner exiting"))));
        if !running.unwrap_or(false) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if keep {
        eprintln!("embedded: state kept in {}", env.dir.display());
    }
    // Read before shutdown, which removes the state directory (runners have exited by now unless
    // they are still writing key-cache entries; then their peak RSS is missing from the table).
    let worker_init_secs = runner_log_values(&logs, "SP1 worker ready", "secs=").into_iter().reduce(f64::max);
    let runner_peak_rss_mb = runner_log_values(&logs, "runner exiting", "peak_rss_mb=").into_iter().reduce(f64::max).map(|mb| mb as u64);
    let runner_peak_gpu_mb = runner_log_values(&logs, "GPU memory", "peak_gpu_mb=").into_iter().reduce(f64::max).map(|mb| mb as u64);
    env.shutdown().await;
    let (proof, proof_secs) = outcome?;
    Ok(EmbeddedRun { proof, proof_secs, worker_init_secs, runner_peak_rss_mb, runner_peak_gpu_mb })
}

/// Values a runner logs as `<key><number>` on its line containing `marker` (e.g. `SP1 worker
/// ready secs=…`, `runner exiting … peak_rss_mb=…`), one per runner log.
fn runner_log_values(log_dir: &std::path::Path, marker: &str, key: &str) -> Vec<f64> {
    let Ok(entries) = std::fs::read_dir(log_dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let line = text.lines().find(|l| l.contains(marker))?;
            line.split(key).nth(1)?.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

fn report(proof: &Proof, args: &ProveArgs) -> Result<()> {
    print_proof(proof);
    match proof.status.as_str() {
        "completed" if args.mode == "execute" => Ok(()),
        "completed" => {
            println!("proof written to {}", args.out.display());
            Ok(())
        }
        other => bail!("proof {} {other}: {}", proof.id, proof.failure_cause),
    }
}

fn print_proof(p: &Proof) {
    println!("proof {}  mode {}  status {}", p.id, p.mode, p.status);
    if !p.waiting.is_empty() {
        println!("waiting: {}", p.waiting);
    }
    if p.cycles > 0 {
        println!("cycles {}", p.cycles);
    }
    if !p.public_values.is_empty() {
        println!("public values 0x{}", hex(&p.public_values));
    }
    for s in &p.stages {
        println!("  {:<11} {:<8} {}/{}", s.stage, s.state, s.done, s.total);
    }
    if let Some(u) = p.usage.as_ref().filter(|u| u.cpu_runner_secs + u.gpu_runner_secs > 0.0) {
        println!("usage: {}; estimated cost ${:.4}", usage_figures(u), u.estimated_cost_usd);
    }
    if let Some(q) = &p.quote {
        print_quote_check(q);
    }
    if !p.failure_cause.is_empty() {
        println!("cause: {}", p.failure_cause);
    }
}

fn estimate_line(e: &Estimate) -> String {
    let u = e.usage.unwrap_or_default();
    let scale_up =
        if e.scale_up_secs > 0.0 { format!(" (of which {:.0} s for a GPU node to start)", e.scale_up_secs) } else { String::new() };
    format!("{:.1} s{scale_up}; {}; cost ${:.4}", e.eta_secs, usage_figures(&u), u.estimated_cost_usd)
}

/// Task- and runner-seconds per pool, as `get` and `quote` print them.
fn usage_figures(u: &proofjobs_api::proto::Usage) -> String {
    format!(
        "tasks {:.1} s CPU, {:.1} s GPU; runners {:.1} s CPU, {:.1} s GPU",
        u.cpu_task_secs, u.gpu_task_secs, u.cpu_runner_secs, u.gpu_runner_secs
    )
}

fn print_quote(q: &QuoteResponse) {
    println!("quote {}  mode {}  cycles {}", q.quote_id, q.mode, q.cycles);
    match (&q.estimate, q.basis_proofs) {
        (_, 0) => println!("no completed {} proof on this cluster yet: no estimate beyond the cycles", q.mode),
        (Some(e), n) => println!("estimate from {n} completed {} proof(s): {}", q.mode, estimate_line(e)),
        (None, _) => {}
    }
    println!("submit with --quote {} to compare the estimate with the actual figures", q.quote_id);
}

fn print_quote_check(q: &QuoteCheck) {
    if let Some(e) = &q.estimated {
        println!("quote {}: estimated {}", q.quote_id, estimate_line(e));
    }
    let Some(actual) = q.actual_usage else { return };
    let pct = |e: Option<f64>| e.map_or("n/a".to_string(), |e| format!("{e:+.0}%"));
    println!(
        "  actual {:.1} s; tasks {:.1} s CPU, {:.1} s GPU; error: time {}, CPU tasks {}, GPU tasks {}, cost {}",
        q.actual_secs,
        actual.cpu_task_secs,
        actual.gpu_task_secs,
        pct(q.eta_error_pct),
        pct(q.cpu_task_secs_error_pct),
        pct(q.gpu_task_secs_error_pct),
        pct(q.cost_error_pct)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn verify(elf: &std::path::Path, proof: &std::path::Path) -> Result<()> {
    use sp1_sdk::{Prover, ProvingKey};
    let program = inputs::read_maybe_zst(elf)?;
    let proof = sp1_sdk::SP1ProofWithPublicValues::load(proof).with_context(|| format!("loading {}", proof.display()))?;
    let started = Instant::now();
    let client = sp1_sdk::ProverClient::builder().light().build().await;
    let pk = client.setup(program.into()).await.map_err(|e| anyhow::anyhow!("setup: {e}"))?;
    client.verify(&proof, pk.verifying_key(), None).map_err(|e| anyhow::anyhow!("proof does NOT verify: {e}"))?;
    println!("proof verifies ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}
