//! What a backend must do for the dispatcher: start a runner group for a proof's stages, stop
//! one, and report which ended. The local backend uses child processes; the Kubernetes backend
//! uses Jobs. Both read their runner's fate from the exit-code contract.

use std::{collections::HashSet, sync::Arc, time::Duration};

use proofjobs_pipeline::{
    ids,
    stage::Stage,
    state::{Priority, RunnerRow},
};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct RunnerSpec {
    pub runner_id: String,
    pub proof_id: String,
    pub stages: Vec<Stage>,
    /// Seconds left before the proof's deadline; a runner never outlives it.
    pub deadline_secs: i64,
    pub share: Share,
    /// What gives the runner database rights on its proof (see `Db::issue_runner_token`).
    pub runner_token: Option<String>,
}

/// Whose runner it is and what its requester may have of contended GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub requester: String,
    pub weight: u32,
    pub max_gpu_runners: Option<u32>,
    pub priority: Priority,
}

/// A runner that ended, with its exit code when the backend saw one.
#[derive(Debug, Clone)]
pub struct Ended {
    pub runner_id: String,
    pub exit_code: Option<i32>,
}

/// The work a live runner group has, for its progress view and how far it may grow.
#[derive(Debug, Clone, Default)]
pub struct GroupLoad {
    pub done: i64,
    pub total: i64,
    /// Tasks pending or running.
    pub open: i64,
    /// Tasks one runner of the group works on at once.
    pub concurrency: usize,
}

/// Something an operator should read about a runner group (on Kubernetes, an Event on its Job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    /// Short, PascalCase: `Retrying`, `Hung`, `ProofFailed`.
    pub reason: &'static str,
    pub message: String,
}

#[allow(async_fn_in_trait)]
pub trait Backend: Send + Sync + 'static {
    /// The name recorded on runner rows, so each backend adopts only its own runners.
    fn name(&self) -> &'static str;
    /// The id of a group's `attempt`-th runner. Kubernetes makes it the deterministic Job name,
    /// so a restarted dispatcher re-creating it finds the Job instead of a twin.
    fn runner_id(&self, _proof_id: &str, _stages: &[Stage], _attempt: u32) -> String {
        ids::new_runner_id()
    }
    /// Whether this backend's runner rows are the runners themselves, heartbeating (local
    /// processes), so a silent one is hung. Job rows are not: their pods carry the heartbeats.
    fn heartbeats(&self) -> bool {
        false
    }
    /// Woken when the backend's world changes (a watch event), besides the database's notifications.
    fn changed(&self) -> Option<Arc<Notify>> {
        None
    }
    /// Whether a change the backend announced may have ended a runner (so a full pass is due)
    /// rather than only altered what a live one shows (an observe sweep is enough).
    fn take_ended(&self) -> bool {
        true
    }
    /// The runner groups (by handle, e.g. Job name) whose backend objects changed since the last
    /// call, so the observe sweep visits them; `None` when the backend lost track (a watch
    /// relisted) and every group should be visited.
    fn take_changed(&self) -> Option<HashSet<String>> {
        Some(HashSet::new())
    }
    /// Keep a live runner group in step with its load (progress shown to operators, parallelism).
    /// Returns how long its pods have waited for capacity, when they are waiting.
    fn observe(
        &self,
        _runner: &RunnerRow,
        _load: &GroupLoad,
    ) -> impl std::future::Future<Output = anyhow::Result<Option<Duration>>> + Send {
        async { Ok(None) }
    }
    /// Tell operators what happened to a runner group, where the backend has a place for it.
    fn tell(&self, _runner: &RunnerRow, _note: &Note) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
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

    /// `all` (one runner per proof), `per-stage`, or explicit groups such as
    /// `execute,wrap/setup,prove-core,compress,shrink` (stages not named get a group each).
    pub fn parse(s: &str) -> Result<Placement, String> {
        match s {
            "all" | "single" => return Ok(Placement::single_runner()),
            "per-stage" => return Ok(Placement::per_stage()),
            _ => {}
        }
        let mut groups: Vec<Vec<Stage>> = Vec::new();
        for part in s.split('/') {
            let group = proofjobs_pipeline::stage::parse_stage_list(part)
                .map_err(|e| format!("placement {s:?}: {e} (expected all, per-stage or groups like execute,wrap/setup,prove-core)"))?;
            if let Some(stage) = group.iter().find(|st| groups.iter().any(|g| g.contains(st))) {
                return Err(format!("placement {s:?} names stage {stage} twice"));
            }
            groups.push(group);
        }
        for stage in Stage::ALL {
            if !groups.iter().any(|g| g.contains(&stage)) {
                groups.push(vec![stage]);
            }
        }
        Ok(Placement { groups })
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
        let custom = Placement::parse("execute,wrap/setup,prove-core,compress").unwrap();
        assert_eq!(custom.group_of(Stage::Wrap), &[Stage::Execute, Stage::Wrap]);
        assert_eq!(custom.group_of(Stage::Compress), &[Stage::Setup, Stage::ProveCore, Stage::Compress]);
        assert_eq!(custom.group_of(Stage::Shrink), &[Stage::Shrink]);
        assert!(Placement::parse("execute/execute,setup").is_err());
    }
}
