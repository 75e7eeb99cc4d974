//! The Kubernetes backend: a runner group is a Job (docs/ARCHITECTURE.md, "Kubernetes backend").
//! `job_spec.rs` builds Jobs, `profiles.rs` holds the stage profiles, `view.rs` decides what a
//! Job shows, `watch.rs` keeps the dispatcher's view of Jobs and pods (watches, not polling; an
//! event wakes the reconcile loop). Each pod of a Job is its own runner on the task bus (its own claims), so a
//! pod that dies has exactly its own tasks handed back.

pub mod job_spec;
pub mod leader;
pub mod profiles;
pub mod view;
pub mod watch;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use chrono::Utc;
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
    Api, Client, Resource, ResourceExt,
};
use proofjobs_pipeline::{
    exit,
    stage::{group_name, labels, stage_list, Stage},
    state::{Db, RunnerRow},
};
use tokio::sync::Notify;

use self::{
    job_spec::{build_job, job_name, JobSettings, POD_BACKEND},
    profiles::StageProfiles,
    view::{container_exit_code, finished, job_gpus, JobEnd, JobView, Waiting},
    watch::Watch,
};
use crate::backend::{Backend, Ended, GroupLoad, Note, RunnerSpec};

/// How long a runner row may exist without its Job or pod in view before it counts as gone
/// (covers watch lag after a create; a real loss is far longer-lived).
const VANISH_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct KubeSettings {
    pub job: JobSettings,
    pub profiles: StageProfiles,
    /// GPU pods (across all proofs) the dispatcher runs at once; more wait as suspended Jobs.
    pub max_gpu_pods: u32,
    /// Pods one stage Job of one proof may grow to.
    pub max_pods_per_job: u32,
    /// A runner pod whose heartbeat is older than this is hung: deleted, its tasks handed on.
    pub hung_after: Duration,
}

pub struct KubeBackend {
    jobs_api: Api<Job>,
    pods_api: Api<Pod>,
    recorder: Recorder,
    watch: Watch,
    settings: KubeSettings,
    db: Db,
    /// GPU pods granted per Job by this process (parallelism × gpus), ahead of the watch.
    granted: Mutex<HashMap<String, u32>>,
    /// Jobs this process has seen in the watch: one missing after that was deleted, not lagging.
    seen: Mutex<HashSet<String>>,
}

impl KubeBackend {
    /// Start watching Jobs and pods, and wait for their first full listing.
    pub async fn start(client: Client, settings: KubeSettings, db: Db) -> Result<KubeBackend> {
        let ns = settings.job.namespace.clone();
        let jobs_api = Api::<Job>::namespaced(client.clone(), &ns);
        let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
        let watch = Watch::start(jobs_api.clone(), pods_api.clone(), &ns).await?;
        let instance = std::env::var("HOSTNAME").ok();
        let recorder = Recorder::new(client, Reporter { controller: "proofjobs-dispatcher".into(), instance });
        Ok(KubeBackend { jobs_api, pods_api, recorder, watch, settings, db, granted: Mutex::new(HashMap::new()), seen: Mutex::default() })
    }

    /// GPU pods in use or granted: unfinished, unsuspended GPU Jobs' parallelism × gpus.
    fn gpu_in_use(&self) -> u32 {
        let granted = self.granted.lock().unwrap();
        let mut total = 0;
        let mut seen = std::collections::HashSet::new();
        for job in self.watch.jobs() {
            let name = job.name_any();
            seen.insert(name.clone());
            if finished(&job).is_some() {
                continue;
            }
            let spec = job.spec.as_ref();
            let watched = if spec.and_then(|s| s.suspend).unwrap_or(false) {
                0
            } else {
                spec.and_then(|s| s.parallelism).unwrap_or(1).max(0) as u32 * job_gpus(&job)
            };
            total += watched.max(granted.get(&name).copied().unwrap_or(0));
        }
        // Granted but not yet seen by the watch.
        total + granted.iter().filter(|(name, _)| !seen.contains(*name)).map(|(_, n)| *n).sum::<u32>()
    }

    /// Pods of a Job that the scheduler could not place, and since when.
    fn unschedulable_for(&self, job: &str) -> Option<Duration> {
        let now = k8s_openapi::jiff::Timestamp::now();
        self.watch
            .pods_of(job)
            .iter()
            .filter_map(|pod| {
                let conditions = pod.status.as_ref()?.conditions.as_ref()?;
                let c = conditions
                    .iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))?;
                let since = c.last_transition_time.as_ref().or(pod.metadata.creation_timestamp.as_ref())?.0;
                Duration::try_from(now.duration_since(since)).ok()
            })
            .max()
    }

    /// Per-pod runner rows: close those whose pod ended or vanished (their tasks go back), and
    /// delete pods whose runner stopped beating (hung: its Job starts a replacement).
    async fn reap_pods(&self, rows: &[RunnerRow]) -> Result<()> {
        let now = Utc::now();
        for row in rows {
            let pod = self.watch.pod(&row.id);
            match pod {
                Some(pod) => {
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
                    if phase == "Succeeded" || phase == "Failed" {
                        self.db.runner_exited(&row.id, container_exit_code(&pod), None).await?;
                        continue;
                    }
                    let silent = (now - row.last_seen()).to_std().unwrap_or_default();
                    if silent > self.settings.hung_after && pod.metadata.deletion_timestamp.is_none() {
                        let why = format!("hung: no heartbeat for {} s (limit {} s)", silent.as_secs(), self.settings.hung_after.as_secs());
                        tracing::warn!(pod = %row.id, "runner pod {why}; deleting it");
                        match self.pods_api.delete(&row.id, &DeleteParams::default()).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if e.code == 404 => {}
                            Err(e) => return Err(e).with_context(|| format!("deleting hung pod {}", row.id)),
                        }
                        self.db.runner_exited(&row.id, None, Some(&why)).await?;
                        if let Some(job) = self.watch.job(&row.handle) {
                            self.event(&job, true, "RunnerHung", format!("pod {} {why}; deleted, its tasks handed back", row.id)).await;
                        }
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
}

/// The Job a runner row stands for: its handle once launched (the id is the same name).
fn job_of(runner: &RunnerRow) -> &str {
    if runner.handle.is_empty() {
        &runner.id
    } else {
        &runner.handle
    }
}

fn age(row: &RunnerRow) -> Duration {
    (Utc::now() - row.started_at).to_std().unwrap_or_default()
}

impl Backend for KubeBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn runner_id(&self, proof_id: &str, stages: &[Stage], attempt: u32) -> String {
        job_name(proof_id, &group_name(stages), attempt)
    }

    fn changed(&self) -> Option<Arc<Notify>> {
        Some(self.watch.changed.clone())
    }

    fn take_ended(&self) -> bool {
        self.watch.take_ended()
    }

    fn take_changed(&self) -> Option<HashSet<String>> {
        self.watch.take_changed()
    }

    async fn launch(&self, spec: &RunnerSpec) -> Result<String> {
        let profile = self.settings.profiles.for_group(&spec.stages);
        let gpus = profile.gpus;
        let queued = gpus > 0 && self.gpu_in_use() + gpus > self.settings.max_gpu_pods;
        let job = build_job(spec, &profile, &self.settings.job, queued);
        match self.jobs_api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                tracing::info!(job = %spec.runner_id, proof = %spec.proof_id, queued, "stage Job created");
                let note = format!(
                    "runner group for stages {} of proof {}{}",
                    stage_list(&spec.stages),
                    spec.proof_id,
                    if queued { "; queued behind the GPU cap (--max-gpu-pods)" } else { "" }
                );
                self.event(&created, false, "Created", note).await;
            }
            // Created by an earlier dispatcher that died before recording it: adopt it.
            Err(kube::Error::Api(e)) if e.code == 409 => tracing::info!(job = %spec.runner_id, "stage Job exists; adopting it"),
            Err(e) => return Err(e).with_context(|| format!("creating Job {}", spec.runner_id)),
        }
        if !queued && gpus > 0 {
            self.granted.lock().unwrap().insert(spec.runner_id.clone(), gpus);
        }
        Ok(spec.runner_id.clone())
    }

    async fn tell(&self, runner: &RunnerRow, note: &Note) {
        if let Some(job) = self.watch.job(job_of(runner)) {
            self.event(&job, note.warning, note.reason, note.message.clone()).await;
        }
    }

    async fn stop(&self, runner: &RunnerRow) -> Result<()> {
        let name = job_of(runner);
        if self.watch.job(name).is_some_and(|j| j.metadata.deletion_timestamp.is_some() || finished(&j).is_some()) {
            return Ok(());
        }
        // Background propagation: a Job deleted with the default policy orphans its pods.
        match self.jobs_api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(job = %name, "stage Job deleted");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting Job {name}")),
        }
    }

    async fn reap(&self, live: &[RunnerRow]) -> Result<Vec<Ended>> {
        // Pod rows, read once: closed below when their pod ended, or when their Job did.
        let pod_rows = self.db.live_runners(POD_BACKEND).await?;
        self.reap_pods(&pod_rows).await?;
        let mut ended = Vec::new();
        for runner in live {
            let name = job_of(runner);
            let outcome = match self.watch.job(name) {
                Some(job) => {
                    self.seen.lock().unwrap().insert(name.to_string());
                    match finished(&job) {
                        Some(JobEnd::Complete) => Some(Some(exit::DONE)),
                        // The code the deciding pod's runner exited with, as its container status says.
                        Some(JobEnd::Failed) => Some(view::deciding_exit_code(&self.watch.pods_of_now(name))),
                        None => None,
                    }
                }
                None if self.seen.lock().unwrap().remove(name) || age(runner) > VANISH_GRACE => {
                    tracing::warn!(job = %name, "stage Job is gone (deleted by hand?)");
                    Some(None)
                }
                None => None,
            };
            if let Some(exit_code) = outcome {
                // Its pods have all stopped; close their rows so their tasks are back now.
                // runner_exited closes a row once; rows reap_pods just closed are left as they are.
                for pod in pod_rows.iter().filter(|p| p.handle == *name) {
                    self.db.runner_exited(&pod.id, None, Some("its Job ended")).await?;
                }
                self.granted.lock().unwrap().remove(name);
                ended.push(Ended { runner_id: runner.id.clone(), exit_code });
            }
        }
        Ok(ended)
    }

    async fn observe(&self, runner: &RunnerRow, load: &GroupLoad) -> Result<Option<Duration>> {
        let name = job_of(runner).to_string();
        let Some(job) = self.watch.job(&name) else { return Ok(None) };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let spec = job.spec.as_ref();
        let gpus = job_gpus(&job);
        let suspended = spec.and_then(|s| s.suspend).unwrap_or(false);
        let current = spec.and_then(|s| s.parallelism).unwrap_or(1).max(1) as u32;
        let labels_now = job.labels();
        // The GPU its pods found, once one has reported it: `kubectl get jobs -L proofjobs.io/gpu`.
        let known_gpu = job.annotations().get(labels::GPU).cloned();
        let gpu = match known_gpu {
            Some(gpu) => Some(gpu),
            None if gpus > 0 => self.db.group_device(&name).await?,
            None => None,
        };
        let progress = format!("{}-of-{}", load.done, load.total);
        if finished(&job).is_some() {
            // Only the final counts are left to show.
            let view = JobView { progress, waiting: None, gpu, parallelism: current as i32, suspend: suspended };
            self.show(&job, &view).await?;
            return Ok(None);
        }
        // Parallelism follows the queue (never shrinks: idle pods leave by themselves).
        let wanted = (load.open.max(1) as u32).div_ceil(load.concurrency.max(1) as u32).clamp(1, self.settings.max_pods_per_job);
        let (parallelism, suspend) = if gpus > 0 {
            let mine = if suspended { 0 } else { current * gpus };
            let granted = self.granted.lock().unwrap().get(&name).copied().unwrap_or(0);
            let others = self.gpu_in_use().saturating_sub(mine.max(granted));
            match view::gpu_grant(current, suspended, wanted, gpus, others, self.settings.max_gpu_pods) {
                Some(pods) => {
                    self.granted.lock().unwrap().insert(name.clone(), pods * gpus);
                    (pods, false)
                }
                None => (current, true),
            }
        } else {
            (current.max(wanted), false)
        };
        let waiting_for = if suspend { None } else { self.unschedulable_for(&name) };
        let waiting = if suspend { Some(Waiting::Queued) } else { waiting_for.map(|_| Waiting::ForCapacity) };
        let was_waiting = labels_now.get(labels::WAITING).cloned();
        let view = JobView { progress, waiting, gpu, parallelism: parallelism as i32, suspend };
        self.show(&job, &view).await?;
        if waiting.map(Waiting::label) != was_waiting.as_deref() {
            match waiting {
                Some(Waiting::ForCapacity) => {
                    let note = format!("no node can run its pods yet (limit --capacity-wait-secs); stages {}", stage_list(&runner.stages));
                    self.event(&job, true, "WaitingForCapacity", note).await;
                }
                Some(Waiting::Queued) => {
                    let note = format!("suspended: GPU pods in use reach the cap of {} (--max-gpu-pods)", self.settings.max_gpu_pods);
                    self.event(&job, false, "Queued", note).await;
                }
                None if was_waiting.is_some() => self.event(&job, false, "Running", "its pods have a node".into()).await,
                None => {}
            }
        }
        Ok(waiting_for)
    }
}

impl KubeBackend {
    /// Make the Job show `view`, skipping the write when it already does.
    async fn show(&self, job: &Job, view: &JobView) -> Result<()> {
        let name = job.name_any();
        let labels_now = job.labels();
        let spec = job.spec.as_ref();
        let shown = labels_now.get(labels::PROGRESS) == Some(&view.progress)
            && labels_now.get(labels::WAITING).map(String::as_str) == view.waiting.map(Waiting::label)
            && job.annotations().get(labels::GPU) == view.gpu.as_ref()
            && spec.and_then(|s| s.parallelism).unwrap_or(1) == view.parallelism
            && spec.and_then(|s| s.suspend).unwrap_or(false) == view.suspend;
        if shown {
            return Ok(());
        }
        let params = PatchParams::apply(view::VIEW_MANAGER).force();
        self.jobs_api
            .patch(&name, &params, &Patch::Apply(&view.apply_body(&name)))
            .await
            .with_context(|| format!("updating Job {name}"))?;
        Ok(())
    }

    /// A Kubernetes Event on a stage Job, for `kubectl describe job`. Best effort: an Event that
    /// cannot be written is logged, never a reason to stop.
    async fn event(&self, job: &Job, warning: bool, reason: &str, note: String) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &job.object_ref(&())).await {
            tracing::debug!(job = %job.name_any(), reason, "could not record an Event: {e}");
        }
    }
}
