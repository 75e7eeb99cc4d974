//! The Kubernetes backend: a runner group is a Job (docs/ARCHITECTURE.md, "Kubernetes backend").
//! `job_spec.rs` builds Jobs, `profiles.rs` holds the stage profiles, `view.rs` decides what a
//! Job shows, `watch.rs` keeps the dispatcher's view of Jobs and pods (watches, not polling; an
//! event wakes the reconcile loop), `pods.rs` reaps runner pods that ended or went silent. Each
//! pod of a Job is its own runner on the task bus (its own claims), so a pod that dies has
//! exactly its own tasks handed back.

pub mod job_spec;
pub mod leader;
mod pods;
pub mod profiles;
pub mod share;
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
    share::{allocate, GpuJob, Grant},
    view::{finished, job_gpus, JobEnd, JobView, Waiting},
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
    /// GPU Jobs as this process last granted them (pods, requester), ahead of the watch.
    granted: Mutex<HashMap<String, GpuJob>>,
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

    /// Every unfinished GPU Job, oldest first, as the watch shows it or (when newer) as this
    /// process granted it, with `me`'s demand set to what it wants (appended when not yet known).
    fn gpu_jobs(&self, granted: &HashMap<String, GpuJob>, me: GpuJob) -> (Vec<GpuJob>, usize) {
        let mut jobs: Vec<(Option<k8s_openapi::jiff::Timestamp>, GpuJob)> = Vec::new();
        let mut seen = HashSet::new();
        for job in self.watch.jobs() {
            seen.insert(job.name_any());
            let Some(mut gpu_job) = GpuJob::of(&job) else { continue };
            if let Some(g) = granted.get(&gpu_job.name) {
                gpu_job.pods = gpu_job.pods.max(g.pods);
                gpu_job.wanted = gpu_job.wanted.max(gpu_job.pods);
            }
            jobs.push((job.metadata.creation_timestamp.as_ref().map(|t| t.0), gpu_job));
        }
        // Granted but not yet in the watch: the newest. One the watch showed before and no
        // longer does is gone, and its GPUs with it.
        let gone = self.seen.lock().unwrap();
        jobs.extend(granted.values().filter(|g| !seen.contains(&g.name) && !gone.contains(&g.name)).map(|g| (None, g.clone())));
        drop(gone);
        jobs.sort_by(|(ta, a), (tb, b)| (ta.is_none(), ta, &a.name).cmp(&(tb.is_none(), tb, &b.name)));
        let mut jobs: Vec<GpuJob> = jobs.into_iter().map(|(_, j)| j).collect();
        let index = match jobs.iter().position(|j| j.name == me.name) {
            Some(i) => {
                jobs[i].wanted = me.wanted.max(jobs[i].pods);
                i
            }
            None => {
                jobs.push(me);
                jobs.len() - 1
            }
        };
        (jobs, index)
    }

    /// Decide what GPU Job `me` may run and record a grant, in one step under the lock so two
    /// decisions never hand out the same GPU.
    fn grant(&self, me: GpuJob) -> Grant {
        let mut granted = self.granted.lock().unwrap();
        let (jobs, index) = self.gpu_jobs(&granted, me);
        let grant = allocate(&jobs, self.settings.max_gpu_pods)[index];
        if let Grant::Pods(pods) = grant {
            granted.insert(jobs[index].name.clone(), GpuJob { pods, ..jobs[index].clone() });
        }
        grant
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
        let queued = gpus > 0
            && !matches!(
                self.grant(GpuJob {
                    name: spec.runner_id.clone(),
                    requester: spec.share.requester.clone(),
                    weight: spec.share.weight,
                    max_gpu_runners: spec.share.max_gpu_runners,
                    priority: spec.share.priority,
                    gpus_per_pod: gpus,
                    pods: 0,
                    wanted: 1,
                }),
                Grant::Pods(_)
            );
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
            Err(e) => {
                self.granted.lock().unwrap().remove(&spec.runner_id);
                return Err(e).with_context(|| format!("creating Job {}", spec.runner_id));
            }
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
                // Its GPUs go to the next Job as soon as the watch sees it go.
                self.granted.lock().unwrap().remove(name);
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
        self.reap_unregistered(live, &pod_rows).await?;
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
        let (parallelism, held) = match GpuJob::of(&job) {
            Some(me) => match self.grant(GpuJob { wanted, ..me }) {
                Grant::Pods(pods) => (pods, None),
                Grant::Queued => (current, Some(Waiting::Queued)),
                Grant::OverQuota => (current, Some(Waiting::OverQuota)),
            },
            None => (current.max(wanted), None),
        };
        let suspend = held.is_some();
        let waiting_for = if suspend { None } else { self.unschedulable_for(&name) };
        let waiting = held.or(waiting_for.map(|_| Waiting::ForCapacity));
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
                Some(Waiting::OverQuota) => {
                    let requester = job.labels().get(labels::REQUESTER).cloned().unwrap_or_default();
                    let note =
                        format!("suspended: requester {requester:?} runs as many GPU pods as its quota allows (proofctl admin quota)");
                    self.event(&job, false, "QueuedOverQuota", note).await;
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
