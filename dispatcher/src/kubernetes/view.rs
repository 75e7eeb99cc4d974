//! What operators see of a stage Job and the pure decisions behind it: the labels, parallelism
//! and suspension the dispatcher keeps current (written with server-side apply, so the fields are
//! owned by one field manager and a label dropped from the view is removed), and which exit code
//! decided a failed Job.

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
    /// Suspended: its requester runs as many GPU pods as its quota allows.
    OverQuota,
    /// Pods unschedulable: no node can take them yet (e.g. a GPU pool scaling from zero).
    ForCapacity,
}

impl Waiting {
    pub fn label(self) -> &'static str {
        match self {
            Waiting::Queued => "queued",
            Waiting::OverQuota => labels::OVER_QUOTA,
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
