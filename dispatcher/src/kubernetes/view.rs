//! What operators see of a stage Job and the pure decisions behind it: the labels, parallelism
//! and suspension the dispatcher keeps current (written with server-side apply, so the fields are
//! owned by one field manager and a label dropped from the view is removed), how many GPU pods a
//! Job may have under the global cap, and which exit code decided a failed Job.

use std::sync::Arc;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ContainerStateTerminated, Pod},
};
use proofjobs_pipeline::stage::labels;

use super::job_spec::{gpu_label, CONTAINER, GPU_RESOURCE};

/// The field manager of the view; the Job's creation is recorded under another, so the view
/// never removes what creation set.
pub const VIEW_MANAGER: &str = "proofjobs-dispatcher-view";

/// Why a Job waits, shown as `proofjobs.io/waiting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Suspended behind the global GPU cap.
    Queued,
    /// Pods unschedulable: no node can take them yet (e.g. a GPU pool scaling from zero).
    ForCapacity,
}

impl Waiting {
    pub fn label(self) -> &'static str {
        match self {
            Waiting::Queued => "queued",
            Waiting::ForCapacity => "waiting-for-capacity",
        }
    }
}

/// The dispatcher's part of a Job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    /// `<done>-of-<total>` tasks of the group's stages.
    pub progress: String,
    pub waiting: Option<Waiting>,
    /// The GPU its pods found, as the runner described it.
    pub gpu: Option<String>,
    pub parallelism: i32,
    pub suspend: bool,
}

impl JobView {
    /// The server-side-apply body that makes a Job show this view.
    pub fn apply_body(&self, name: &str) -> serde_json::Value {
        let mut label_values = serde_json::Map::new();
        label_values.insert(labels::PROGRESS.into(), self.progress.clone().into());
        if let Some(waiting) = self.waiting {
            label_values.insert(labels::WAITING.into(), waiting.label().into());
        }
        let mut metadata = serde_json::json!({ "name": name, "labels": label_values });
        if let Some(gpu) = &self.gpu {
            metadata["labels"][labels::GPU] = gpu_label(gpu).into();
            metadata["annotations"] = serde_json::json!({ labels::GPU: gpu });
        }
        serde_json::json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata,
            "spec": { "parallelism": self.parallelism, "suspend": self.suspend },
        })
    }
}

/// How many pods a GPU Job may run under the global cap, or `None` to suspend it (no room).
/// Parallelism follows the queue (`wanted`) but never shrinks a running Job: idle pods leave by
/// themselves. `others` counts GPUs in use or granted by every other Job.
pub fn gpu_grant(current: u32, suspended: bool, wanted: u32, gpus_per_pod: u32, others: u32, max_gpus: u32) -> Option<u32> {
    let room = max_gpus.saturating_sub(others) / gpus_per_pod.max(1);
    if room == 0 {
        return None;
    }
    let floor = if suspended { 1 } else { current.min(room) };
    Some(current.max(wanted).min(room).max(floor))
}

/// The exit code that failed a Job: its pods' runner containers that terminated with a non-zero
/// code, the last to finish deciding. `None` when no pod says (pods gone, killed without a code).
pub fn deciding_exit_code(pods: &[Arc<Pod>]) -> Option<i32> {
    pods.iter()
        .filter_map(|pod| runner_termination(pod))
        .filter(|t| t.exit_code != 0)
        .max_by_key(|t| t.finished_at.as_ref().map(|at| at.0))
        .map(|t| t.exit_code)
}

/// GPUs each pod of a Job asks for.
pub fn job_gpus(job: &Job) -> u32 {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().filter_map(|c| c.resources.as_ref()?.limits.as_ref()?.get(GPU_RESOURCE)?.0.parse::<u32>().ok()).sum())
        .unwrap_or(0)
}

/// The runner container's exit code, once it terminated.
pub fn container_exit_code(pod: &Pod) -> Option<i32> {
    runner_termination(pod).map(|t| t.exit_code)
}

/// How the runner container of a pod terminated, once it has.
fn runner_termination(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == CONTAINER)?.state.as_ref()?.terminated.as_ref()
}

/// How a finished Job ended. Only the final conditions count: since 1.31 the Job controller
/// sets them after every pod has stopped, so no pod of it still holds tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Complete,
    Failed,
}

pub fn finished(job: &Job) -> Option<JobEnd> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let holds = |type_: &str| conditions.iter().any(|c| c.type_ == type_ && c.status == "True");
    if holds("Complete") {
        Some(JobEnd::Complete)
    } else if holds("Failed") {
        Some(JobEnd::Failed)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_is_applied_with_only_what_it_shows() {
        let view = JobView { progress: "3-of-8".into(), waiting: None, gpu: None, parallelism: 2, suspend: false };
        let body = view.apply_body("p-prove-core");
        assert_eq!(body["metadata"]["labels"][labels::PROGRESS], "3-of-8");
        assert!(body["metadata"]["labels"].get(labels::WAITING).is_none(), "an omitted label is removed by apply");
        assert_eq!(body["spec"]["parallelism"], 2);
        let queued = JobView { waiting: Some(Waiting::Queued), gpu: Some("NVIDIA H200 (GPU 0, 8.9 cc)".into()), ..view }.apply_body("j");
        assert_eq!(queued["metadata"]["labels"][labels::WAITING], "queued");
        assert_eq!(queued["metadata"]["labels"][labels::GPU], "NVIDIA-H200");
        assert_eq!(queued["metadata"]["annotations"][labels::GPU], "NVIDIA H200 (GPU 0, 8.9 cc)");
    }

    #[test]
    fn gpu_jobs_grow_with_their_queue_within_the_global_cap() {
        // 8 shards waiting, 4 per pod → 2 pods wanted, room for 3.
        assert_eq!(gpu_grant(1, false, 2, 1, 0, 3), Some(2));
        // Another Job holds 2 of 3 GPUs: only one pod.
        assert_eq!(gpu_grant(1, false, 4, 1, 2, 3), Some(1));
        // No room at all: suspend (or stay suspended).
        assert_eq!(gpu_grant(1, false, 2, 1, 3, 3), None);
        assert_eq!(gpu_grant(1, true, 2, 1, 3, 3), None);
        // A suspended Job that gets room starts with at least one pod.
        assert_eq!(gpu_grant(1, true, 1, 1, 2, 3), Some(1));
        // Never shrink a running Job below what it has while there is room for it.
        assert_eq!(gpu_grant(3, false, 1, 1, 0, 4), Some(3));
        // Two GPUs per pod: room is counted in pods.
        assert_eq!(gpu_grant(1, false, 4, 2, 2, 8), Some(3));
    }

    fn pod(exit: Option<(i32, &str)>) -> Arc<Pod> {
        let state = match exit {
            Some((code, at)) => serde_json::json!({"terminated": {"exitCode": code, "finishedAt": at}}),
            None => serde_json::json!({"running": {}}),
        };
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "status": {"containerStatuses": [{"name": CONTAINER, "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": state}]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_failed_jobs_exit_code_comes_from_its_pods() {
        let pods =
            [pod(Some((75, "2026-11-30T01:00:00Z"))), pod(Some((65, "2026-11-30T01:00:05Z"))), pod(Some((0, "2026-11-30T01:00:09Z")))];
        assert_eq!(deciding_exit_code(&pods), Some(65));
        assert_eq!(deciding_exit_code(&[pod(None)]), None);
        assert_eq!(deciding_exit_code(&[]), None);
    }

    fn job_with(conditions: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
            "spec": {"template": {"spec": {"containers": [{"name": "task-runner", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}}},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn only_final_conditions_finish_a_job() {
        assert_eq!(finished(&job_with(serde_json::json!([{"type": "Complete", "status": "True"}]))), Some(JobEnd::Complete));
        assert_eq!(finished(&job_with(serde_json::json!([{"type": "SuccessCriteriaMet", "status": "True"}]))), None);
        assert_eq!(finished(&job_with(serde_json::json!([{"type": "FailureTarget", "status": "True"}]))), None);
        let failed = job_with(serde_json::json!([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]));
        assert_eq!(finished(&failed), Some(JobEnd::Failed));
        assert_eq!(job_gpus(&failed), 2);
    }
}
