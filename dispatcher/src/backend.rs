//! What a backend must do for the dispatcher: start a runner group for a proof's stages, stop
//! one, and report which ended. The local backend uses child processes; the Kubernetes backend
//! uses Jobs. Both read their runner's fate from the exit-code contract.

use proofjobs_pipeline::{stage::Stage, state::RunnerRow};

#[derive(Debug, Clone)]
pub struct RunnerSpec {
    pub runner_id: String,
    pub proof_id: String,
    pub stages: Vec<Stage>,
    /// Seconds left before the proof's deadline; a runner never outlives it.
    pub deadline_secs: i64,
}

/// A runner that ended, with its exit code when the backend saw one.
#[derive(Debug, Clone)]
pub struct Ended {
    pub runner_id: String,
    pub exit_code: Option<i32>,
}

#[allow(async_fn_in_trait)]
pub trait Backend: Send + Sync + 'static {
    /// The name recorded on runner rows, so each backend adopts only its own runners.
    fn name(&self) -> &'static str;
    /// Start a runner; returns its handle (pid, Job name).
    fn launch(&self, spec: &RunnerSpec) -> impl std::future::Future<Output = anyhow::Result<String>> + Send;
    /// Stop a runner whose proof no longer needs it.
    fn stop(&self, runner: &RunnerRow) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
    /// Which of the `live` runners have ended.
    fn reap(&self, live: &[RunnerRow]) -> impl std::future::Future<Output = anyhow::Result<Vec<Ended>>> + Send;
}

/// Which stages share one runner. On a GPU cluster every stage gets its own Job; on a small
/// machine one runner per proof serves every stage, because each SP1 prover process holds ~7 GB
/// of keys and a proof's stages overlap in time.
#[derive(Debug, Clone)]
pub struct Placement {
    groups: Vec<Vec<Stage>>,
}

impl Placement {
    pub fn per_stage() -> Placement {
        Placement { groups: Stage::ALL.iter().map(|s| vec![*s]).collect() }
    }

    pub fn single_runner() -> Placement {
        Placement { groups: vec![Stage::ALL.to_vec()] }
    }

    /// `all` (one runner per proof) or `per-stage`.
    pub fn parse(s: &str) -> Result<Placement, String> {
        match s {
            "all" | "single" => Ok(Placement::single_runner()),
            "per-stage" => Ok(Placement::per_stage()),
            other => Err(format!("unknown placement {other:?} (expected all or per-stage)")),
        }
    }

    /// The group that serves `stage`.
    pub fn group_of(&self, stage: Stage) -> &[Stage] {
        self.groups.iter().find(|g| g.contains(&stage)).map(Vec::as_slice).expect("every stage is placed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_cover_every_stage() {
        for placement in [Placement::per_stage(), Placement::single_runner()] {
            for stage in Stage::ALL {
                assert!(placement.group_of(stage).contains(&stage));
            }
        }
        assert_eq!(Placement::per_stage().group_of(Stage::Compress), &[Stage::Compress]);
        assert_eq!(Placement::parse("all").unwrap().group_of(Stage::Setup).len(), 6);
        assert!(Placement::parse("gpu").is_err());
    }
}
