//! `proofctl bench fibonacci <Mcycles>`: the same program and input proved through the embedded
//! pipeline and, side by side in the same run, directly in a fresh process — with sp1-sdk's CPU
//! prover, or with `--baseline-bin` another prover such as SP1's GPU prover (`sp1-gpu-direct`) —
//! wall time and peak memory of each, as a table. `--check` verifies every proof it timed.
//! `proofctl bench execute` compares execute-only runs with sp1-sdk's light client (execute.rs).

mod execute;

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use clap::Subcommand;
use proofjobs_guests::{fibonacci_n_for_cycles, FIBONACCI_ELF};

use crate::ProveArgs;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prove the in-repo Fibonacci guest at about <MCYCLES> million cycles.
    Fibonacci {
        mcycles: f64,
        /// Modes to measure, comma separated.
        #[arg(long, default_value = "core,compressed")]
        modes: String,
        /// Skip the direct sp1-sdk baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Runner key-cache settings to compare, comma separated: `on` (PROOFJOBS_KEY_CACHE as
        /// set, else the default directory) and/or `off` (every recursion key computed).
        #[arg(long, default_value = "on")]
        key_cache: String,
        /// A baseline program run instead of sp1-sdk's CPU prover, as `<bin> --elf E --stdin S
        /// --mode M --out P`: it writes a bincode `ProofFromNetwork` to P and prints one JSON line
        /// (init_s, setup_s, total_s, peak_rss_kb, peak_gpu_mb). `sp1-gpu-direct` is one.
        #[arg(long)]
        baseline_bin: Option<PathBuf>,
        /// Verify every timed proof with the stock sp1-sdk verifier, check that a tampered copy is
        /// refused and that its public values equal the CPU executor's (one execute-mode run).
        #[arg(long)]
        check: bool,
    },
    /// Execute a program with sp1-sdk's light client, in embedded mode and (with --api) through a
    /// cluster, each as a fresh process, interleaved; prints median wall times and the ratios.
    Execute {
        /// The program (default: the in-repo Fibonacci guest at --fibonacci-mcycles).
        #[arg(long, requires = "stdin")]
        elf: Option<PathBuf>,
        /// Its bincode SP1Stdin.
        #[arg(long, requires = "elf")]
        stdin: Option<PathBuf>,
        #[arg(long, default_value_t = 100.0)]
        fibonacci_mcycles: f64,
        /// Paired runs of each.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also run through this proofjobs api.
        #[arg(long)]
        api: Option<String>,
    },
    /// (internal) sp1-sdk's light client `execute` in this process; prints a JSON line.
    #[command(hide = true)]
    Light {
        #[arg(long)]
        elf: PathBuf,
        #[arg(long)]
        stdin: PathBuf,
    },
    /// (internal) One direct sp1-sdk proof in this process; prints a JSON line.
    #[command(hide = true)]
    Sdk {
        #[arg(long)]
        n: u64,
        #[arg(long)]
        mode: String,
    },
}

pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Fibonacci { mcycles, modes, no_baseline, key_cache, baseline_bin, check } => {
            let baseline = match (no_baseline, baseline_bin) {
                (true, _) => Baseline::None,
                (false, Some(bin)) => Baseline::Bin(bin),
                (false, None) => Baseline::Sdk,
            };
            fibonacci(mcycles, &modes, baseline, &key_cache, check).await
        }
        BenchCommand::Execute { elf, stdin, fibonacci_mcycles, runs, api } => {
            anyhow::ensure!(runs > 0, "--runs must be at least 1");
            let dir = tempfile::tempdir()?;
            let (elf, stdin) = match (elf, stdin) {
                (Some(elf), Some(stdin)) => (elf, stdin),
                _ => {
                    let n = fibonacci_n_for_cycles((fibonacci_mcycles * 1e6) as u64);
                    let (elf, stdin) = (dir.path().join("fibonacci.elf"), dir.path().join("stdin.bin"));
                    std::fs::write(&elf, FIBONACCI_ELF)?;
                    std::fs::write(&stdin, bincode::serialize(&fibonacci_stdin(n))?)?;
                    (elf, stdin)
                }
            };
            tokio::task::spawn_blocking(move || execute::run(execute::ExecuteBench { elf, stdin, runs, api })).await?
        }
        BenchCommand::Light { elf, stdin } => execute::light(&elf, &stdin).await,
        BenchCommand::Sdk { n, mode } => sdk(n, &mode).await,
    }
}

pub fn fibonacci_stdin(n: u64) -> sp1_sdk::SP1Stdin {
    let mut stdin = sp1_sdk::SP1Stdin::new();
    stdin.write(&n);
    stdin
}

/// What the pipeline is compared with.
pub enum Baseline {
    None,
    /// sp1-sdk's CPU prover (`proofctl bench sdk` in a fresh process).
    Sdk,
    /// A program speaking the `--baseline-bin` contract.
    Bin(PathBuf),
}

struct Row {
    mode: String,
    key_cache: String,
    pipeline_s: f64,
    runner_rss_mb: Option<u64>,
    runner_gpu_mb: Option<u64>,
    runner_init_s: Option<f64>,
    sdk: Option<serde_json::Value>,
}

async fn fibonacci(mcycles: f64, modes: &str, baseline: Baseline, key_cache: &str, check: bool) -> Result<()> {
    let configured_cache = std::env::var_os("PROOFJOBS_KEY_CACHE");
    let cache_settings: Vec<&str> = key_cache.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    anyhow::ensure!(
        !cache_settings.is_empty() && cache_settings.iter().all(|s| ["on", "off"].contains(s)),
        "--key-cache takes on and/or off, not {key_cache:?}"
    );
    let n = fibonacci_n_for_cycles((mcycles * 1e6) as u64);
    let dir = tempfile::tempdir()?;
    let elf = dir.path().join("fibonacci.elf");
    std::fs::write(&elf, FIBONACCI_ELF)?;
    let stdin_path = dir.path().join("stdin.bin");
    std::fs::write(&stdin_path, bincode::serialize(&fibonacci_stdin(n))?)?;
    let checker = if check {
        eprintln!("bench: fibonacci n={n}: public values from the CPU executor (execute mode)");
        let args = ProveArgs {
            elf: elf.clone(),
            stdin: Some(stdin_path.clone()),
            mode: "execute".into(),
            out: dir.path().join("execute.out"),
            deadline_secs: 0,
            cycle_limit: 0,
            idempotency_key: String::new(),
            quote: String::new(),
            quiet: true,
        };
        let executed = crate::prove_embedded(&args, false).await?;
        anyhow::ensure!(executed.status == "completed", "execute run {}: {}", executed.status, executed.failure_cause);
        Some(crate::checks::ProofChecker::new(FIBONACCI_ELF, executed.public_values).await?)
    } else {
        None
    };
    let mut rows = Vec::new();
    let mut cycles = 0;
    for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        for setting in &cache_settings {
            // Runners inherit the environment of this process (embedded mode's local backend).
            match (*setting, &configured_cache) {
                ("off", _) => std::env::set_var("PROOFJOBS_KEY_CACHE", "off"),
                (_, Some(dir)) => std::env::set_var("PROOFJOBS_KEY_CACHE", dir),
                (_, None) => std::env::remove_var("PROOFJOBS_KEY_CACHE"),
            }
            eprintln!("bench: fibonacci n={n}, mode {mode}, key cache {setting}: embedded pipeline");
            let args = ProveArgs {
                elf: elf.clone(),
                stdin: Some(stdin_path.clone()),
                mode: mode.to_string(),
                out: dir.path().join(format!("{mode}.proof")),
                deadline_secs: 0,
                cycle_limit: 0,
                idempotency_key: String::new(),
                quote: String::new(),
                quiet: true,
            };
            let run = crate::prove_embedded_measured(&args, std::env::var_os("PROOFJOBS_BENCH_KEEP").is_some()).await?;
            let proof = run.proof;
            // Like the baseline's total: from the start to the proof in hand, teardown excluded.
            let pipeline_s = run.proof_secs;
            anyhow::ensure!(proof.status == "completed", "pipeline proof {}: {}", proof.status, proof.failure_cause);
            cycles = proof.cycles;
            if let Some(checker) = &checker {
                checker.check_saved(&args.out).with_context(|| format!("pipeline {mode} proof"))?;
                eprintln!("bench: pipeline {mode} proof verifies, tampered copy refused, public values match the executor's");
            }
            // One baseline per mode, after the last pipeline run of that mode.
            let last_setting = setting == cache_settings.last().expect("checked non-empty");
            let sdk = match &baseline {
                Baseline::None => None,
                _ if !last_setting => None,
                Baseline::Sdk => {
                    eprintln!("bench: fibonacci n={n}, mode {mode}: sp1-sdk CpuProver in a fresh process");
                    Some(run_baseline(std::process::Command::new(std::env::current_exe()?).args([
                        "bench",
                        "sdk",
                        "--n",
                        &n.to_string(),
                        "--mode",
                        mode,
                    ]))?)
                }
                Baseline::Bin(bin) => {
                    eprintln!("bench: fibonacci n={n}, mode {mode}: {} in a fresh process", bin.display());
                    let out = dir.path().join(format!("{mode}.baseline.proof"));
                    let mut command = std::process::Command::new(bin);
                    command.arg("--elf").arg(&elf).arg("--stdin").arg(&stdin_path).args(["--mode", mode]).arg("--out").arg(&out);
                    let result = run_baseline(&mut command)?;
                    if let Some(checker) = &checker {
                        checker.check_network_proof(&out).with_context(|| format!("baseline {mode} proof"))?;
                        eprintln!("bench: baseline {mode} proof verifies, tampered copy refused, public values match the executor's");
                    }
                    Some(result)
                }
            };
            rows.push(Row {
                mode: mode.to_string(),
                key_cache: setting.to_string(),
                pipeline_s,
                runner_rss_mb: run.runner_peak_rss_mb,
                runner_gpu_mb: run.runner_peak_gpu_mb,
                runner_init_s: run.worker_init_secs,
                sdk,
            });
        }
    }
    println!("fibonacci n={n} ({cycles} cycles), {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let direct = match &baseline {
        Baseline::Bin(bin) => bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        _ => "sp1-sdk".into(),
    };
    let gpu = rows.iter().any(|r| r.runner_gpu_mb.is_some() || r.sdk.as_ref().is_some_and(|v| v["peak_gpu_mb"].is_u64()));
    println!("fibonacci: {mcycles} Mcycles requested; checks {}", if check { "passed" } else { "not run" });
    print!("| mode | key cache | proofjobs embedded (s) | {direct} direct (s) | ratio | runner peak RSS (GB) | {direct} peak RSS (GB) | runner prover init (s) | {direct} prover init (s) |");
    println!(
        "{}",
        if gpu { format!(" runner peak GPU (GB) | {direct} peak GPU (GB) | MHz (cycles/s, pipeline) |") } else { String::new() }
    );
    println!("|---|---|---|---|---|---|---|---|---|{}", if gpu { "---|---|---|" } else { "" });
    // Every row of a mode compares against that mode's one baseline run.
    let baselines: std::collections::HashMap<String, serde_json::Value> =
        rows.iter().filter_map(|r| Some((r.mode.clone(), r.sdk.clone()?))).collect();
    for mut row in rows {
        row.sdk = baselines.get(&row.mode).cloned();
        let sdk_s = row.sdk.as_ref().and_then(|v| v["total_s"].as_f64());
        let sdk_rss = row.sdk.as_ref().and_then(|v| v["peak_rss_kb"].as_u64());
        let sdk_init = row.sdk.as_ref().and_then(|v| v["init_s"].as_f64());
        print!(
            "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} |",
            row.mode,
            row.key_cache,
            row.pipeline_s,
            sdk_s.map(|s| format!("{s:.1}")).unwrap_or("-".into()),
            sdk_s.map(|s| format!("{:.2}x", row.pipeline_s / s)).unwrap_or("-".into()),
            row.runner_rss_mb.map(|mb| format!("{:.1}", mb as f64 / 1024.0)).unwrap_or("-".into()),
            sdk_rss.map(|k| format!("{:.1}", k as f64 / 1e6)).unwrap_or("-".into()),
            row.runner_init_s.map(|s| format!("{s:.1}")).unwrap_or("-".into()),
            sdk_init.map(|s| format!("{s:.1}")).unwrap_or("-".into()),
        );
        if gpu {
            let gb = |mb: Option<u64>| mb.map(|mb| format!("{:.1}", mb as f64 / 1024.0)).unwrap_or("-".into());
            let sdk_gpu = row.sdk.as_ref().and_then(|v| v["peak_gpu_mb"].as_u64());
            print!(" {} | {} | {:.2} |", gb(row.runner_gpu_mb), gb(sdk_gpu), cycles as f64 / row.pipeline_s / 1e6);
        }
        println!();
    }
    Ok(())
}

/// Runs a baseline process and reads the JSON line it prints last.
fn run_baseline(command: &mut std::process::Command) -> Result<serde_json::Value> {
    let out = command.output().context("running the baseline")?;
    anyhow::ensure!(out.status.success(), "baseline failed: {}", String::from_utf8_lossy(&out.stderr));
    last_json_line(&String::from_utf8_lossy(&out.stdout))
}

/// The result a baseline process prints as its last stdout line (the `--baseline-bin` contract,
/// and `bench sdk` / `bench light`).
fn last_json_line(stdout: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?)
}

/// The baseline: what a user of sp1-sdk does in one process, timed from process start.
async fn sdk(n: u64, mode: &str) -> Result<()> {
    use sp1_sdk::{ProveRequest, Prover, ProvingKey};
    let started = Instant::now();
    let client = sp1_sdk::ProverClient::builder().cpu().build().await;
    let init_s = started.elapsed().as_secs_f64();
    let pk = client.setup(FIBONACCI_ELF.into()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let setup_s = started.elapsed().as_secs_f64() - init_s;
    let request = client.prove(&pk, fibonacci_stdin(n));
    let proof = match mode {
        "core" => request.core().await,
        "compressed" => request.compressed().await,
        other => anyhow::bail!("the sdk baseline measures core and compressed, not {other}"),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let total_s = started.elapsed().as_secs_f64();
    client.verify(&proof, pk.verifying_key(), None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = std::env::temp_dir().join(format!("proofjobs-bench-sdk-{mode}.proof"));
    proof.save(&out)?;
    println!(
        "{}",
        serde_json::json!({ "init_s": init_s, "setup_s": setup_s, "total_s": total_s, "peak_rss_kb": proofjobs_pipeline::memory::peak_rss_kb() })
    );
    Ok(())
}
