//! The environment contract between whoever starts a runner (the dispatcher's local backend, a
//! stage Job's pod spec) and the task-runner that reads it. The variable names and their meanings
//! are defined here once: [`RunnerEnv`] renders to variables and parses back from them, so both
//! sides cannot drift apart. docs/ARCHITECTURE.md, "The runner's environment", lists them.

use std::fmt;

use crate::stage::{parse_stage_list, stage_list, Stage};

/// The proof whose tasks the runner works on.
pub const PROOF_ID: &str = "PROOFJOBS_PROOF_ID";
/// Comma-separated stages the runner serves.
pub const STAGES: &str = "PROOFJOBS_STAGES";
/// The runner's id (its row, its claims); in a Job, the pod's name.
pub const RUNNER_ID: &str = "PROOFJOBS_RUNNER_ID";
/// The backend the runner's row is recorded under (`local`, or `kubernetes-pod` inside a Job).
pub const RUNNER_BACKEND: &str = "PROOFJOBS_RUNNER_BACKEND";
/// What identifies the runner to its backend: the Job name in a pod (default: the pid).
pub const RUNNER_HANDLE: &str = "PROOFJOBS_RUNNER_HANDLE";
/// PostgreSQL URL of the state (a Secret's `runner-database-url` in a Job).
pub const DATABASE_URL: &str = "DATABASE_URL";
/// The artifact store, `redis://…` or `file:///…` (a Secret's `artifact-store` in a Job).
pub const ARTIFACT_STORE: &str = "PROOFJOBS_ARTIFACT_STORE";
/// Directory of the recursion-key cache; `off` disables it.
pub const KEY_CACHE: &str = "PROOFJOBS_KEY_CACHE";
/// Which SP1 prover proves: `cpu` or `cuda`. Every runner of a proof must be told the same.
pub const PROVER: &str = "PROOFJOBS_PROVER";
/// GiB a GPU must have free for the runner to take GPU work on it.
pub const GPU_MIN_FREE_GIB: &str = "PROOFJOBS_GPU_MIN_FREE_GIB";
/// Seconds a runner waits with nothing to do before it exits.
pub const IDLE_EXIT_SECS: &str = "PROOFJOBS_IDLE_EXIT_SECS";
/// GPUs the runner's pod asked for (absent: a CPU runner); recorded on its row for usage.
pub const RUNNER_GPUS: &str = "PROOFJOBS_RUNNER_GPUS";
/// The token the dispatcher issued for the runner's proof: with a database role that is a member
/// of `proofjobs_runner`, it is what gives the runner rights on that proof's rows (and no other).
pub const RUNNER_TOKEN: &str = "PROOFJOBS_RUNNER_TOKEN";

/// The backend name of a runner that is one pod of a stage Job.
pub const POD_BACKEND: &str = "kubernetes-pod";

/// What a runner is told through its environment. Optional fields are left out when unset; the
/// runner then uses its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerEnv {
    pub proof_id: String,
    pub stages: Vec<Stage>,
    pub runner_id: Option<String>,
    pub backend: String,
    pub handle: Option<String>,
    pub database_url: String,
    pub artifact_store: String,
    pub key_cache: Option<String>,
    pub prover: Option<String>,
    pub gpu_min_free_gib: Option<f64>,
    pub idle_exit_secs: Option<u64>,
    pub runner_token: Option<String>,
    pub gpus: Option<u32>,
}

/// A variable of the contract that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    pub var: &'static str,
    pub problem: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.problem)
    }
}

impl std::error::Error for EnvError {}

impl RunnerEnv {
    pub const DEFAULT_BACKEND: &'static str = "local";

    /// The variables, in a stable order, without the unset optional ones.
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![(PROOF_ID, self.proof_id.clone()), (STAGES, stage_list(&self.stages))];
        let optional = [
            (RUNNER_ID, self.runner_id.clone()),
            (RUNNER_BACKEND, Some(self.backend.clone())),
            (RUNNER_HANDLE, self.handle.clone()),
            (DATABASE_URL, Some(self.database_url.clone())),
            (ARTIFACT_STORE, Some(self.artifact_store.clone())),
            (KEY_CACHE, self.key_cache.clone()),
            (PROVER, self.prover.clone()),
            (GPU_MIN_FREE_GIB, self.gpu_min_free_gib.map(|g| g.to_string())),
            (IDLE_EXIT_SECS, self.idle_exit_secs.map(|s| s.to_string())),
            (RUNNER_TOKEN, self.runner_token.clone()),
            (RUNNER_GPUS, self.gpus.map(|g| g.to_string())),
        ];
        vars.extend(optional.into_iter().filter_map(|(name, value)| Some((name, value.filter(|v| !v.is_empty())?))));
        vars
    }

    /// Parse the contract from `get` (the process environment, or flags standing in for it).
    pub fn from_vars(get: impl Fn(&'static str) -> Option<String>) -> Result<RunnerEnv, EnvError> {
        let required = |var: &'static str| get(var).filter(|v| !v.is_empty()).ok_or_else(|| EnvError { var, problem: "is not set".into() });
        let optional = |var: &'static str| get(var).filter(|v| !v.is_empty());
        let stages = parse_stage_list(&required(STAGES)?).map_err(|problem| EnvError { var: STAGES, problem })?;
        let gpu_min_free_gib = match optional(GPU_MIN_FREE_GIB) {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|g| g.is_finite() && *g >= 0.0)
                    .ok_or_else(|| EnvError { var: GPU_MIN_FREE_GIB, problem: format!("{v:?} is not a number of GiB") })?,
            ),
        };
        let idle_exit_secs = match optional(IDLE_EXIT_SECS) {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| EnvError { var: IDLE_EXIT_SECS, problem: format!("{v:?} is not a number of seconds") })?,
            ),
        };
        let gpus = match optional(RUNNER_GPUS) {
            None => None,
            Some(v) => Some(
                v.trim().parse::<u32>().map_err(|_| EnvError { var: RUNNER_GPUS, problem: format!("{v:?} is not a number of GPUs") })?,
            ),
        };
        Ok(RunnerEnv {
            proof_id: required(PROOF_ID)?,
            stages,
            runner_id: optional(RUNNER_ID),
            backend: optional(RUNNER_BACKEND).unwrap_or_else(|| Self::DEFAULT_BACKEND.into()),
            handle: optional(RUNNER_HANDLE),
            database_url: required(DATABASE_URL)?,
            artifact_store: required(ARTIFACT_STORE)?,
            key_cache: optional(KEY_CACHE),
            prover: optional(PROVER),
            gpu_min_free_gib,
            idle_exit_secs,
            runner_token: optional(RUNNER_TOKEN),
            gpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn full() -> RunnerEnv {
        RunnerEnv {
            proof_id: "p1".into(),
            stages: vec![Stage::Setup, Stage::ProveCore],
            runner_id: Some("r1".into()),
            backend: POD_BACKEND.into(),
            handle: Some("job-1".into()),
            database_url: "postgres://u@h/db".into(),
            artifact_store: "redis://h:6379".into(),
            key_cache: Some("/keys".into()),
            prover: Some("cuda".into()),
            gpu_min_free_gib: Some(40.5),
            idle_exit_secs: Some(7),
            runner_token: Some("t0k3n".into()),
            gpus: Some(1),
        }
    }

    fn parse(vars: &[(&'static str, String)]) -> Result<RunnerEnv, EnvError> {
        let map: HashMap<&str, String> = vars.iter().cloned().collect();
        RunnerEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn renders_and_parses_back() {
        let env = full();
        assert_eq!(parse(&env.to_vars()).unwrap(), env);
        let minimal = RunnerEnv {
            runner_id: None,
            handle: None,
            key_cache: None,
            prover: None,
            gpu_min_free_gib: None,
            idle_exit_secs: None,
            runner_token: None,
            gpus: None,
            backend: "local".into(),
            ..full()
        };
        let vars = minimal.to_vars();
        assert!(!vars.iter().any(|(k, _)| *k == PROVER || *k == RUNNER_ID), "{vars:?}");
        assert_eq!(parse(&vars).unwrap(), minimal);
    }

    #[test]
    fn missing_and_malformed_variables_are_named() {
        let mut vars = full().to_vars();
        vars.retain(|(k, _)| *k != DATABASE_URL);
        assert_eq!(parse(&vars).unwrap_err().var, DATABASE_URL);
        let mut vars = full().to_vars();
        vars.iter_mut().filter(|(k, _)| *k == STAGES).for_each(|(_, v)| *v = "gpu".into());
        assert_eq!(parse(&vars).unwrap_err().var, STAGES);
        let mut vars = full().to_vars();
        vars.iter_mut().filter(|(k, _)| *k == GPU_MIN_FREE_GIB).for_each(|(_, v)| *v = "lots".into());
        let err = parse(&vars).unwrap_err();
        assert_eq!(err.var, GPU_MIN_FREE_GIB);
        assert!(err.to_string().contains("lots"), "{err}");
    }
}
