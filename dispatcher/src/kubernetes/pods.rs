//! Runner pods, one runner row each: closing the rows of pods that ended or vanished (their
//! tasks go back), and deleting pods whose runner went silent. Silence has two forms: a runner
//! whose heartbeats stopped, and a pod whose container runs but whose runner never registered
//! (frozen or stuck before its first database write). Either way the Job starts a replacement.

use std::{collections::HashSet, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use chrono::Utc;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{api::DeleteParams, ResourceExt};
use proofjobs_pipeline::state::RunnerRow;

use super::{age, job_of, job_spec::CONTAINER, view::container_exit_code, KubeBackend, VANISH_GRACE};

impl KubeBackend {
    /// Per-pod runner rows: close those whose pod ended or vanished (their tasks go back), and
    /// delete pods whose runner stopped beating (hung: its Job starts a replacement).
    pub(super) async fn reap_pods(&self, rows: &[RunnerRow]) -> Result<()> {
        let now = Utc::now();
        for row in rows {
            match self.watch.pod(&row.id) {
                Some(pod) => {
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
                    if phase == "Succeeded" || phase == "Failed" {
                        self.db.runner_exited(&row.id, container_exit_code(&pod), None).await?;
                        continue;
                    }
                    let silent = (now - row.last_seen()).to_std().unwrap_or_default();
                    if silent > self.settings.hung_after && pod.metadata.deletion_timestamp.is_none() {
                        let why = format!("hung: no heartbeat for {} s (limit {} s)", silent.as_secs(), self.settings.hung_after.as_secs());
                        self.delete_silent_pod(&row.id, &row.handle, &format!("{why}; deleted, its tasks handed back")).await?;
                        self.db.runner_exited(&row.id, None, Some(&why)).await?;
                    }
                }
                None if age(row) > VANISH_GRACE => {
                    tracing::warn!(pod = %row.id, "runner pod vanished; its tasks go back to the queue");
                    self.db.runner_exited(&row.id, None, Some("pod vanished")).await?;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Delete the pods of live Jobs whose runner container has run longer than the hang limit
    /// without ever registering. They hold no tasks, but they hold the Job's pod slot (and a
    /// GPU) and would keep the proof waiting forever.
    pub(super) async fn reap_unregistered(&self, jobs: &[RunnerRow], pod_rows: &[RunnerRow]) -> Result<()> {
        let live: HashSet<&str> = pod_rows.iter().map(|r| r.id.as_str()).collect();
        let now = Timestamp::now();
        let mut silent = Vec::new();
        for job in jobs {
            let name = job_of(job);
            let pods = self.watch.pods_of(name);
            silent.extend(unregistered_for(&pods, &live, now, self.settings.hung_after).into_iter().map(|(pod, ran)| (pod, ran, name)));
        }
        if silent.is_empty() {
            return Ok(());
        }
        // A pod without a live row may have registered and exited since: only rowless pods count.
        let ids: Vec<String> = silent.iter().map(|(pod, ..)| pod.clone()).collect();
        let known = self.db.known_runners(&ids).await?;
        for (pod, ran, job) in silent.into_iter().filter(|(pod, ..)| !known.contains(pod)) {
            let why = format!(
                "hung: running {} s without registering its runner (limit {} s); deleted",
                ran.as_secs(),
                self.settings.hung_after.as_secs()
            );
            self.delete_silent_pod(&pod, job, &why).await?;
        }
        Ok(())
    }

    async fn delete_silent_pod(&self, pod: &str, job: &str, why: &str) -> Result<()> {
        tracing::warn!(pod, "runner pod {why}");
        match self.pods_api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting hung pod {pod}")),
        }
        if let Some(job) = self.watch.job(job) {
            self.event(&job, true, "RunnerHung", format!("pod {pod} {why}")).await;
        }
        Ok(())
    }
}

/// Pods whose runner container has been running longer than `limit` with no live runner row,
/// and for how long: candidates for a runner that never registered. Pods being deleted are
/// already on their way out.
fn unregistered_for(pods: &[Arc<Pod>], live: &HashSet<&str>, now: Timestamp, limit: Duration) -> Vec<(String, Duration)> {
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && !live.contains(pod.name_any().as_str()))
        .filter_map(|pod| {
            let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
            let running = statuses.iter().find(|c| c.name == CONTAINER)?.state.as_ref()?.running.as_ref()?;
            let ran = Duration::try_from(now.duration_since(running.started_at.as_ref()?.0)).ok()?;
            (ran > limit).then(|| (pod.name_any(), ran))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, running_since: Option<&str>, deleting: bool) -> Arc<Pod> {
        let state = match running_since {
            Some(at) => serde_json::json!({"running": {"startedAt": at}}),
            None => serde_json::json!({"waiting": {"reason": "ContainerCreating"}}),
        };
        let mut metadata = serde_json::json!({"name": name});
        if deleting {
            metadata["deletionTimestamp"] = "2026-12-01T00:00:50Z".into();
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": metadata,
                "status": {"phase": "Running", "containerStatuses": [
                    {"name": CONTAINER, "image": "i", "imageID": "", "ready": true, "restartCount": 0, "state": state}
                ]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn only_long_running_pods_without_a_live_runner_are_candidates() {
        let now: Timestamp = "2026-12-01T00:01:00Z".parse().unwrap();
        let pods = [
            pod("frozen", Some("2026-12-01T00:00:00Z"), false),
            pod("registered", Some("2026-12-01T00:00:00Z"), false),
            pod("young", Some("2026-12-01T00:00:45Z"), false),
            pod("pulling", None, false),
            pod("going", Some("2026-12-01T00:00:00Z"), true),
        ];
        let live = HashSet::from(["registered"]);
        let found = unregistered_for(&pods, &live, now, Duration::from_secs(20));
        assert_eq!(found, vec![("frozen".to_string(), Duration::from_secs(60))]);
        assert!(unregistered_for(&pods, &live, now, Duration::from_secs(60)).is_empty(), "the limit is exclusive");
    }
}
