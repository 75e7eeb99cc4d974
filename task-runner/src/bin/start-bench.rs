//! start-bench: process start → ready-to-prove, and peak RSS, per stage kind, before and after
//! per-stage provers and the key cache, side by side in one run. Each measurement is a fresh
//! process (this binary re-executed), as a runner pod is.
//!
//! before:     what every runner built until now, `cpu_worker_builder().build()`, whatever its stage.
//! after-cold: this runner's stage-aware build with an empty key cache (a fresh node).
//! after-warm: the same with the cache filled.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use proofjobs_pipeline::stage::{parse_stage_list, Stage};
use proofjobs_task_runner::provers::StageProvers;
use sp1_prover::worker::{cpu_worker_builder, LocalWorkerClient};
use sp1_prover_types::InMemoryArtifactClient;

#[derive(Parser)]
#[command(about = "Measure runner start-up per stage, before and after the key cache")]
struct Args {
    /// Key cache directory the benchmark owns (emptied for the cold runs).
    #[arg(long, default_value = "/tmp/proofjobs-start-bench-keys")]
    cache_dir: PathBuf,
    /// Stage kinds measured warm.
    #[arg(long, default_value = "execute,setup,prove-core,compress,shrink,wrap")]
    stages: String,
    /// Stage kinds also measured with an empty cache.
    #[arg(long, default_value = "prove-core")]
    cold_stages: String,
    /// Skip the `before` measurement (it takes ~100 s).
    #[arg(long)]
    skip_before: bool,
    /// Internal: run one measurement in this process: `before` or `after:<stage>`.
    #[arg(long, hide = true)]
    child: Option<String>,
}

struct Sample {
    secs: f64,
    peak_rss_mb: f64,
    note: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(what) = &args.child {
        return child(what, &args);
    }
    let stages = parse_stage_list(&args.stages).map_err(anyhow::Error::msg)?;
    let cold = parse_stage_list(&args.cold_stages).map_err(anyhow::Error::msg)?;
    let before = if args.skip_before { None } else { Some(measure("before", &args)?) };
    let mut rows = Vec::new();
    for stage in &stages {
        let cold_sample = if cold.contains(stage) {
            let _ = std::fs::remove_dir_all(&args.cache_dir);
            Some(measure(&format!("after:{stage}"), &args)?)
        } else {
            None
        };
        rows.push((*stage, cold_sample));
    }
    // Warm runs after every cold run, so each finds a full cache.
    if !args.cache_dir.exists() {
        measure("after:prove-core", &args)?;
    }
    println!();
    println!("| stage | before: s to ready | before: peak RSS | after, cold cache: s | RSS | after, warm cache: s | RSS | warm cache hits/misses/loaded |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (stage, cold_sample) in rows {
        let warm = measure(&format!("after:{stage}"), &args)?;
        let (b_s, b_rss) =
            before.as_ref().map_or(("-".into(), "-".into()), |b| (format!("{:.1}", b.secs), format!("{:.2} GB", b.peak_rss_mb / 1024.0)));
        let (c_s, c_rss) = cold_sample
            .as_ref()
            .map_or(("-".into(), "-".into()), |c| (format!("{:.1}", c.secs), format!("{:.2} GB", c.peak_rss_mb / 1024.0)));
        println!(
            "| {stage} | {b_s} | {b_rss} | {c_s} | {c_rss} | {:.1} | {:.2} GB | {} |",
            warm.secs,
            warm.peak_rss_mb / 1024.0,
            warm.note
        );
    }
    Ok(())
}

/// Runs one measurement in a fresh process: time to its READY line, peak RSS at exit.
fn measure(what: &str, args: &Args) -> Result<Sample> {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("--child")
        .arg(what)
        .arg("--cache-dir")
        .arg(&args.cache_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut ready = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(note) = line.strip_prefix("READY ") {
            ready = Some((started.elapsed().as_secs_f64(), note.to_string()));
        }
    }
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; rusage is a plain out-parameter.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if waited != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{what}: measurement process failed (status {status})");
    }
    let (secs, note) = ready.with_context(|| format!("{what}: no READY line"))?;
    let sample = Sample { secs, peak_rss_mb: usage.ru_maxrss as f64 / 1024.0, note };
    eprintln!("{what}: {:.1} s to ready, peak RSS {:.0} MB {}", sample.secs, sample.peak_rss_mb, sample.note);
    Ok(sample)
}

fn child(what: &str, args: &Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let artifacts = InMemoryArtifactClient::new();
        let (bus, _) = LocalWorkerClient::init();
        if what == "before" {
            let _worker = cpu_worker_builder().with_artifact_client(artifacts).with_worker_client(bus).build().await?;
            println!("READY full SP1 worker");
            return Ok(());
        }
        let Some(stage) = what.strip_prefix("after:") else { bail!("unknown measurement {what}") };
        let stages: Vec<Stage> = parse_stage_list(stage).map_err(anyhow::Error::msg)?;
        let provers = StageProvers::new(artifacts, bus, stages, Some(args.cache_dir.clone()));
        let counts = provers.ready().await?;
        match counts {
            Some([hits, misses, rejected, loaded, _written]) => {
                println!("READY {hits}/{misses}/{loaded}{}", if rejected > 0 { format!(" ({rejected} rejected)") } else { String::new() })
            }
            None => println!("READY no recursion keys"),
        }
        // Ready is measured; the entries still being written belong to the next measurement.
        provers.finish().await;
        anyhow::Ok(())
    })?;
    // Skip the provers' teardown: the measurement is over.
    std::process::exit(0);
}
