//! `proofctl bench execute`: how much proofjobs adds to running a program. The same ELF and stdin
//! run with sp1-sdk's light client `execute` (the baseline), with `proofctl prove --mode execute`
//! in embedded mode and, with `--api`, through a running cluster. Every run is a fresh process
//! timed from outside, start to exit — what a user waits for — and the runs are interleaved so
//! that a noisy neighbour slows all three alike.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result};

/// One process's wall time and peak memory (its own and that of the children it waited for).
struct Timed {
    secs: f64,
    peak_rss_kb: u64,
    stdout: String,
}

/// Runs `command` to completion; its rusage comes from `wait4`, so the peak RSS is this run's.
fn run_timed(command: &mut Command) -> Result<Timed> {
    let started = Instant::now();
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting a benchmark run")?;
    let pid = child.id() as libc::pid_t;
    // Read the pipes on their own threads so a chatty child cannot block on a full pipe.
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.map(|p| Box::new(p) as _));
    let mut status = 0;
    // SAFETY: plain FFI call with valid out-pointers; `pid` is our own child, not yet reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(reaped == pid, "waiting for the benchmark run: {}", std::io::Error::last_os_error());
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{:?} failed (wait status {status}):\n{stdout}{stderr}",
        command.get_program()
    );
    Ok(Timed { secs, peak_rss_kb: usage.ru_maxrss as u64, stdout })
}

/// The cycle count a `proofctl prove` run printed.
fn printed_cycles(stdout: &str) -> Option<u64> {
    stdout.lines().find_map(|l| l.strip_prefix("cycles ")?.trim().parse().ok())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

pub struct ExecuteBench {
    pub elf: PathBuf,
    pub stdin: PathBuf,
    pub runs: usize,
    pub api: Option<String>,
}

pub fn run(bench: ExecuteBench) -> Result<()> {
    let exe = std::env::current_exe()?;
    let out = tempfile::tempdir()?;
    let prove = |api: Option<&str>| {
        let mut command = Command::new(&exe);
        command.args(["prove", "--quiet", "--mode", "execute"]).arg("--elf").arg(&bench.elf).arg("--stdin").arg(&bench.stdin);
        command.arg("--out").arg(out.path().join("unused"));
        match api {
            Some(api) => command.args(["--api", api]),
            None => command.env_remove("PROOFJOBS_API"),
        };
        command
    };
    let light = || {
        let mut command = Command::new(&exe);
        command.args(["bench", "light"]).arg("--elf").arg(&bench.elf).arg("--stdin").arg(&bench.stdin);
        command
    };
    let mut columns: Vec<(&str, Vec<Timed>)> = vec![("sp1-sdk light client", vec![]), ("proofjobs embedded", vec![])];
    if bench.api.is_some() {
        columns.push(("proofjobs cluster", vec![]));
    }
    for round in 1..=bench.runs {
        eprintln!("bench execute: round {round}/{}", bench.runs);
        columns[0].1.push(run_timed(&mut light())?);
        columns[1].1.push(run_timed(&mut prove(None))?);
        if let Some(api) = &bench.api {
            columns[2].1.push(run_timed(&mut prove(Some(api)))?);
        }
    }
    // Every run must have executed the same program to the same end.
    let baseline_cycles: Option<u64> = super::last_json_line(&columns[0].1[0].stdout)?["cycles"].as_u64();
    for (name, runs) in &columns[1..] {
        for run in runs {
            anyhow::ensure!(
                printed_cycles(&run.stdout) == baseline_cycles,
                "{name} ran {:?} cycles, the light client {baseline_cycles:?}",
                printed_cycles(&run.stdout)
            );
        }
    }
    let baseline_s = median(columns[0].1.iter().map(|t| t.secs).collect());
    println!(
        "{}: {} cycles, {} paired runs, {} cores; median wall time of a fresh process, start to exit",
        bench.elf.display(),
        baseline_cycles.unwrap_or(0),
        bench.runs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("| run | median (s) | min (s) | max (s) | ratio to light client | over light client (s) | peak RSS of the timed process and its children (GB) |");
    println!("|---|---|---|---|---|---|---|");
    for (name, runs) in &columns {
        let secs: Vec<f64> = runs.iter().map(|t| t.secs).collect();
        let med = median(secs.clone());
        let peak = runs.iter().map(|t| t.peak_rss_kb).max().unwrap_or(0);
        println!(
            "| {name} | {med:.2} | {:.2} | {:.2} | {:.3}x | {:+.2} | {:.2} |",
            secs.iter().copied().fold(f64::INFINITY, f64::min),
            secs.iter().copied().fold(0.0, f64::max),
            med / baseline_s,
            med - baseline_s,
            peak as f64 / 1e6
        );
    }
    if bench.api.is_some() {
        println!("(cluster: the peak RSS is the client's; the runner is the cluster's process)");
    }
    Ok(())
}

/// The baseline, in this (fresh) process: what an sp1-sdk user writes to run a program.
pub async fn light(elf: &Path, stdin: &Path) -> Result<()> {
    use sp1_sdk::Prover;
    let (program, stdin) = crate::inputs::load(elf, Some(stdin))?;
    let stdin: sp1_sdk::SP1Stdin = bincode::deserialize(&stdin).context("stdin is not a bincode SP1Stdin")?;
    let client = sp1_sdk::ProverClient::builder().light().build().await;
    // sp1-sdk's defaults, as in proofjobs' execute stage: gas metering on, which is also what
    // fills the report's instruction counts.
    let (public_values, report) = client.execute(program.into(), stdin).await.map_err(|e| anyhow::anyhow!("execute: {e}"))?;
    println!(
        "{}",
        serde_json::json!({
            "cycles": report.total_instruction_count(),
            "public_values": public_values.as_slice().len(),
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn cycles_are_read_from_prove_output() {
        assert_eq!(printed_cycles("proof p  mode execute  status completed\ncycles 10234\n"), Some(10234));
        assert_eq!(printed_cycles("proof p  mode execute  status failed\n"), None);
    }

    #[test]
    fn a_timed_run_reports_failure_and_memory() {
        let ok = run_timed(Command::new("sh").args(["-c", "echo hi"])).unwrap();
        assert_eq!(ok.stdout, "hi\n");
        assert!(ok.peak_rss_kb > 0);
        let err = run_timed(Command::new("sh").args(["-c", "echo why >&2; exit 3"])).err().unwrap();
        assert!(format!("{err}").contains("why"), "{err}");
    }
}
