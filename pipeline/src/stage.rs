//! The stage model (docs/ARCHITECTURE.md, "Stages and placement"), defined once. A stage groups the SP1 task types of one proof that
//! share a resource profile; the dispatcher runs one runner group (a local process or a Kubernetes
//! Job) per stage and proof, and users follow progress per stage. Everything that needs to know
//! which task belongs where — the bus, the runner's claim query, Job labels — asks this module.

use std::{fmt, str::FromStr};

use sp1_prover_types::TaskType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Execute,
    Setup,
    ProveCore,
    Compress,
    Shrink,
    Wrap,
}

/// Which machine pool a stage's pods land on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Cpu,
    Gpu,
}

impl Stage {
    pub const ALL: [Stage; 6] = [Stage::Execute, Stage::Setup, Stage::ProveCore, Stage::Compress, Stage::Shrink, Stage::Wrap];

    /// The stage a task type runs in; `None` for bookkeeping tasks no runner ever executes
    /// (the deferred-record marker is completed by the PROVE_SHARD that owns it).
    pub fn of_task(task_type: TaskType) -> Option<Stage> {
        match task_type {
            TaskType::Controller | TaskType::CoreExecute | TaskType::ExecuteOnly => Some(Stage::Execute),
            TaskType::SetupVkey => Some(Stage::Setup),
            TaskType::ProveShard => Some(Stage::ProveCore),
            TaskType::RecursionReduce | TaskType::RecursionDeferred => Some(Stage::Compress),
            TaskType::ShrinkWrap => Some(Stage::Shrink),
            TaskType::PlonkWrap | TaskType::Groth16Wrap => Some(Stage::Wrap),
            TaskType::MarkerDeferredRecord
            | TaskType::UtilVkeyMapController
            | TaskType::UtilVkeyMapChunk
            | TaskType::UnspecifiedTaskType => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Execute => "execute",
            Stage::Setup => "setup",
            Stage::ProveCore => "prove-core",
            Stage::Compress => "compress",
            Stage::Shrink => "shrink",
            Stage::Wrap => "wrap",
        }
    }

    /// The pool a stage needs on a GPU cluster. Local mode runs everything on the CPU.
    pub fn pool(self) -> Pool {
        match self {
            Stage::Execute | Stage::Wrap => Pool::Cpu,
            Stage::Setup | Stage::ProveCore | Stage::Compress | Stage::Shrink => Pool::Gpu,
        }
    }

    /// How many tasks one runner of this stage works on at once. The controller and the core
    /// executor of a proof live for the whole proof, so the execute stage must hold both.
    pub fn runner_concurrency(self) -> usize {
        match self {
            Stage::Execute => 8,
            Stage::Setup | Stage::Shrink | Stage::Wrap => 1,
            Stage::ProveCore | Stage::Compress => 4,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
            .ok_or_else(|| format!("unknown stage {s:?} (expected one of execute, setup, prove-core, compress, shrink, wrap)"))
    }
}

/// Parse a comma-separated stage list such as `execute,setup`.
pub fn parse_stage_list(s: &str) -> Result<Vec<Stage>, String> {
    let mut stages = s.split(',').map(str::trim).filter(|part| !part.is_empty()).map(Stage::from_str).collect::<Result<Vec<_>, _>>()?;
    stages.sort();
    stages.dedup();
    if stages.is_empty() {
        return Err("no stage given".into());
    }
    Ok(stages)
}

/// The name of a group of stages served by one runner group (a Job): the stage's own name, `all`
/// for every stage, else the names joined by `-`. Used in Job names and the stage label.
pub fn group_name(stages: &[Stage]) -> String {
    if stages.len() == Stage::ALL.len() {
        return "all".into();
    }
    stages.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("-")
}

pub fn stage_list(stages: &[Stage]) -> String {
    stages.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

/// The proof modes users ask for. `Execute` runs the program without proving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Execute,
    Core,
    Compressed,
    Plonk,
    Groth16,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Execute => "execute",
            Mode::Core => "core",
            Mode::Compressed => "compressed",
            Mode::Plonk => "plonk",
            Mode::Groth16 => "groth16",
        }
    }

    /// The stages a proof of this mode goes through, in order.
    pub fn stages(self) -> &'static [Stage] {
        match self {
            Mode::Execute => &[Stage::Execute],
            Mode::Core => &[Stage::Execute, Stage::Setup, Stage::ProveCore],
            Mode::Compressed => &[Stage::Execute, Stage::Setup, Stage::ProveCore, Stage::Compress],
            Mode::Plonk | Mode::Groth16 => &Stage::ALL,
        }
    }

    /// sp1's `ProofMode` number (what the controller task and sp1-cluster's options artifact use).
    pub fn sp1_mode(self) -> Option<i32> {
        match self {
            Mode::Execute => None,
            Mode::Core => Some(1),
            Mode::Compressed => Some(2),
            Mode::Plonk => Some(3),
            Mode::Groth16 => Some(4),
        }
    }

    pub fn from_sp1_mode(n: i32) -> Option<Mode> {
        match n {
            1 => Some(Mode::Core),
            2 => Some(Mode::Compressed),
            3 => Some(Mode::Plonk),
            4 => Some(Mode::Groth16),
            _ => None,
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "execute" => Ok(Mode::Execute),
            "core" => Ok(Mode::Core),
            "compressed" => Ok(Mode::Compressed),
            "plonk" => Ok(Mode::Plonk),
            "groth16" => Ok(Mode::Groth16),
            other => Err(format!("unknown mode {other:?} (expected execute, core, compressed, plonk or groth16)")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kubernetes labels on stage Jobs and their pods (docs/ARCHITECTURE.md, "Kubernetes backend").
pub mod labels {
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGER: &str = "proofjobs";
    pub const PROOF: &str = "proofjobs.io/proof";
    pub const STAGE: &str = "proofjobs.io/stage";
    pub const PROGRESS: &str = "proofjobs.io/progress";
    /// What a stage Job waits for, when it waits: `waiting-for-capacity` (pods unschedulable,
    /// e.g. the GPU pool scaling from zero), `queued` (held back by the global GPU cap) or
    /// `queued-over-quota` (its requester is at its GPU runner quota).
    pub const WAITING: &str = "proofjobs.io/waiting";
    /// The GPU model a GPU stage's pods found (e.g. `NVIDIA-H200`); the full description
    /// (capability, memory, utilisation) is the annotation of the same name.
    pub const GPU: &str = "proofjobs.io/gpu";
    /// Whose proof a stage Job works for: `kubectl get jobs -L proofjobs.io/requester`.
    pub const REQUESTER: &str = "proofjobs.io/requester";
    /// Annotations with the requester's share of contended GPUs and its GPU runner quota as they
    /// were when the Job was created, so the GPU allocation reads every input from the Jobs.
    pub const WEIGHT: &str = "proofjobs.io/weight";
    pub const MAX_GPU_RUNNERS: &str = "proofjobs.io/max-gpu-runners";
    /// The requester's priority (`high`, `normal`, `low`), also an annotation: under the GPU cap
    /// a higher one is served first. Its pods run under the matching PriorityClass.
    pub const PRIORITY: &str = "proofjobs.io/priority";
    /// Why a proof or a Job waits when its requester is at a quota (proofs in flight, GPU
    /// runners): shown by the api and as the `proofjobs.io/waiting` label.
    pub const OVER_QUOTA: &str = "queued-over-quota";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runnable_task_type_has_one_stage() {
        assert_eq!(Stage::of_task(TaskType::Controller), Some(Stage::Execute));
        assert_eq!(Stage::of_task(TaskType::CoreExecute), Some(Stage::Execute));
        assert_eq!(Stage::of_task(TaskType::ProveShard), Some(Stage::ProveCore));
        assert_eq!(Stage::of_task(TaskType::RecursionReduce), Some(Stage::Compress));
        assert_eq!(Stage::of_task(TaskType::Groth16Wrap), Some(Stage::Wrap));
        assert_eq!(Stage::of_task(TaskType::MarkerDeferredRecord), None);
    }

    #[test]
    fn stage_names_round_trip() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>().unwrap(), stage);
        }
        assert!("gpu".parse::<Stage>().is_err());
        assert_eq!(parse_stage_list("setup, execute,setup").unwrap(), vec![Stage::Execute, Stage::Setup]);
    }

    #[test]
    fn modes_parse_and_map_to_sp1() {
        assert_eq!("compressed".parse::<Mode>().unwrap().sp1_mode(), Some(2));
        assert_eq!(Mode::from_sp1_mode(4), Some(Mode::Groth16));
        assert!("fast".parse::<Mode>().is_err());
        assert_eq!(Mode::Core.stages().len(), 3);
    }
}
