//! The local backend: runners are child processes of this machine. Each runs in its own process
//! group so a dispatcher restart does not take it down (the new dispatcher adopts it by pid, as the
//! Kubernetes backend adopts Jobs by name), and its output goes to `<log dir>/<runner id>.log`.

use std::{collections::HashMap, path::PathBuf, process::Stdio, sync::Mutex, time::Duration};

use anyhow::{Context, Result};
use proofjobs_pipeline::{runner_env::RunnerEnv, stage::stage_list, state::RunnerRow};
use tokio::process::{Child, Command};

use crate::backend::{Backend, Ended, RunnerSpec};

pub struct LocalBackend {
    runner_bin: PathBuf,
    log_dir: PathBuf,
    database_url: String,
    artifact_store: String,
    /// Besides the runner contract; runners also inherit this process's environment.
    extra_env: Vec<(String, String)>,
    children: Mutex<HashMap<String, Child>>,
}

impl LocalBackend {
    /// Runners get the contract of `proofjobs_pipeline::runner_env` (with these state and store
    /// URLs), then `extra_env`.
    pub fn new(
        runner_bin: PathBuf,
        log_dir: PathBuf,
        database_url: String,
        artifact_store: String,
        extra_env: Vec<(String, String)>,
    ) -> Result<LocalBackend> {
        anyhow::ensure!(
            runner_bin.is_file(),
            "task-runner binary not found at {} (build it with `cargo build --release -p proofjobs-task-runner` or set PROOFJOBS_TASK_RUNNER)",
            runner_bin.display()
        );
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(LocalBackend { runner_bin, log_dir, database_url, artifact_store, extra_env, children: Mutex::new(HashMap::new()) })
    }

    pub fn log_path(&self, runner_id: &str) -> PathBuf {
        self.log_dir.join(format!("{runner_id}.log"))
    }

    /// Signal every runner this backend started and wait for them to go (embedded mode's exit).
    pub async fn shutdown(&self) {
        let pids: Vec<i32> = self.children.lock().unwrap().values().filter_map(|c| c.id()).map(|p| p as i32).collect();
        for pid in &pids {
            signal_group(*pid, libc::SIGTERM);
        }
        for _ in 0..50 {
            if pids.iter().all(|pid| !alive(*pid)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for pid in &pids {
            signal_group(*pid, libc::SIGKILL);
        }
        let mut children = std::mem::take(&mut *self.children.lock().unwrap());
        for child in children.values_mut() {
            let _ = child.wait().await;
        }
    }
}

/// Where an operator points the local backend at a task-runner binary.
pub const TASK_RUNNER_VAR: &str = "PROOFJOBS_TASK_RUNNER";

/// The default place of the task-runner binary: next to the running executable (cargo puts all
/// of a workspace's binaries in one directory; so does the container image).
pub fn default_runner_bin() -> PathBuf {
    if let Ok(path) = std::env::var(TASK_RUNNER_VAR) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    // Test binaries live one level deeper, in target/<profile>/deps.
    let candidates = [dir.join("task-runner"), dir.parent().map(|p| p.join("task-runner")).unwrap_or_default()];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| candidates[0].clone())
}

fn signal_group(pid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-pid, signal);
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state too.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = state.rsplit(')').next().map(|rest| !rest.trim_start().starts_with('Z')).unwrap_or(false);
    running && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("task-runner"))
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn heartbeats(&self) -> bool {
        true
    }

    async fn launch(&self, spec: &RunnerSpec) -> Result<String> {
        let log = std::fs::File::create(self.log_path(&spec.runner_id))?;
        let mut cmd = Command::new(&self.runner_bin);
        let contract = RunnerEnv {
            proof_id: spec.proof_id.clone(),
            stages: spec.stages.clone(),
            runner_id: Some(spec.runner_id.clone()),
            backend: self.name().into(),
            handle: None,
            database_url: self.database_url.clone(),
            artifact_store: self.artifact_store.clone(),
            key_cache: None,
            prover: None,
            gpu_min_free_gib: None,
            idle_exit_secs: None,
            runner_token: spec.runner_token.clone(),
            gpus: None,
        };
        cmd.envs(contract.to_vars())
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn().with_context(|| format!("starting {}", self.runner_bin.display()))?;
        let pid = child.id().unwrap_or_default();
        self.children.lock().unwrap().insert(spec.runner_id.clone(), child);
        tracing::info!(runner = %spec.runner_id, proof = %spec.proof_id, stages = %stage_list(&spec.stages), pid, "runner started");
        Ok(pid.to_string())
    }

    async fn stop(&self, runner: &RunnerRow) -> Result<()> {
        let Ok(pid) = runner.handle.parse::<i32>() else { return Ok(()) };
        if pid <= 0 || !alive(pid) {
            return Ok(());
        }
        signal_group(pid, libc::SIGTERM);
        // Escalate if it has not gone after a grace period.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if alive(pid) {
                signal_group(pid, libc::SIGKILL);
            }
        });
        Ok(())
    }

    async fn reap(&self, live: &[RunnerRow]) -> Result<Vec<Ended>> {
        let mut ended = Vec::new();
        let mut children = self.children.lock().unwrap();
        // Our own children: collect their exit status (this also reaps the zombie).
        children.retain(|runner_id, child| match child.try_wait() {
            Ok(Some(status)) => {
                ended.push(Ended { runner_id: runner_id.clone(), exit_code: status.code() });
                false
            }
            _ => true,
        });
        // Runners started by an earlier dispatcher: alive as long as their pid is.
        for runner in live {
            if children.contains_key(&runner.id) || ended.iter().any(|e| e.runner_id == runner.id) {
                continue;
            }
            let pid = runner.handle.parse::<i32>().unwrap_or(0);
            if pid <= 0 || !alive(pid) {
                ended.push(Ended { runner_id: runner.id.clone(), exit_code: None });
            }
        }
        Ok(ended)
    }
}
