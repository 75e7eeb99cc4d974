//! The Kubernetes backend: a runner group is a Job (docs/ARCHITECTURE.md, "Kubernetes backend"). The dispatcher's view of Jobs
//! and their pods comes from kube-runtime reflectors (watches, not polling); a watch event wakes
//! the reconcile loop. Each pod of a Job is its own runner on the task bus (its own claims), so a
//! pod that dies has exactly its own tasks handed back.

pub mod job_spec;
pub mod profiles;
pub mod view;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector,
        reflector::ObjectRef,
        watcher, WatchStreamExt,
    },
    Api, Client, Resource, ResourceExt,
};
use proofjobs_pipeline::{
    exit,
    stage::{group_name, labels, stage_list, Stage},
    state::{Db, RunnerRow},
};
use tokio::{sync::Notify, task::JoinHandle};

use self::{
    job_spec::{build_job, job_name, JobSettings, GPU_RESOURCE, POD_BACKEND},
    profiles::StageProfiles,
    view::{JobView, Waiting},
};
use crate::backend::{Backend, Ended, GroupLoad, Note, RunnerSpec};

/// Pods by Job name, as of a count of pod watch events.
type PodIndex = (u64, HashMap<String, Vec<Arc<Pod>>>);

/// The label the Job controller puts on a Job's pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
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
    jobs: reflector::Store<Job>,
    pods: reflector::Store<Pod>,
    changed: Arc<Notify>,
    /// Jobs whose Job or pods changed since the observe sweep last asked (`None`: all of them).
    dirty: Arc<Mutex<Option<HashSet<String>>>>,
    /// Set when a Job finished or vanished (or the watch relisted): a full pass is due.
    ends: Arc<AtomicBool>,
    /// Set when a GPU Job finished or vanished: suspended GPU Jobs are due for a look.
    gpus_freed: Arc<AtomicBool>,
    /// Bumped by every pod event, so the pods-by-Job index is rebuilt only when pods changed.
    pod_events: Arc<AtomicU64>,
    pods_by_job: Mutex<PodIndex>,
    settings: KubeSettings,
    db: Db,
    /// GPU pods granted per Job by this process (parallelism × gpus), ahead of the watch.
    granted: Mutex<HashMap<String, u32>>,
    /// Jobs this process has seen in the watch: one missing after that was deleted, not lagging.
    seen: Mutex<std::collections::HashSet<String>>,
    watchers: Vec<JoinHandle<()>>,
}

impl Drop for KubeBackend {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

impl KubeBackend {
    /// Start the Job and pod reflectors and wait for their first full listing, so adoption after
    /// a restart sees every Job that exists.
    pub async fn start(client: Client, settings: KubeSettings, db: Db) -> Result<KubeBackend> {
        let ns = settings.job.namespace.clone();
        let selector = format!("{}={}", labels::MANAGED_BY, labels::MANAGER);
        let changed = Arc::new(Notify::new());
        let dirty: Arc<Mutex<Option<HashSet<String>>>> = Arc::new(Mutex::new(None));
        let ends = Arc::new(AtomicBool::new(true));
        let gpus_freed = Arc::new(AtomicBool::new(false));
        let pod_events = Arc::new(AtomicU64::new(1));
        let jobs_api = Api::<Job>::namespaced(client.clone(), &ns);
        let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
        let instance = std::env::var("HOSTNAME").ok();
        let recorder = Recorder::new(client, Reporter { controller: "proofjobs-dispatcher".into(), instance });
        let (jobs, jobs_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let config = watcher::Config::default().labels(&selector);
        let watchers = vec![
            spawn_reflector("jobs", reflector(jobs_writer, watcher(jobs_api.clone(), config.clone())), {
                let (changed, dirty) = (changed.clone(), dirty.clone());
                let (ends, gpus_freed) = (ends.clone(), gpus_freed.clone());
                move |job: Option<&Job>, deleted: bool| {
                    // A Job that finished or went away is a runner's end: the planner must see it,
                    // and GPU Jobs queued behind the cap may now start.
                    if job.is_none_or(|j| deleted || finished(j).is_some()) {
                        ends.store(true, Ordering::SeqCst);
                        if job.is_none_or(|j| job_gpus(j) > 0) {
                            gpus_freed.store(true, Ordering::SeqCst);
                        }
                    }
                    mark_dirty(&dirty, job.map(|j| j.name_any()));
                    changed.notify_one();
                }
            }),
            spawn_reflector("pods", reflector(pods_writer, watcher(pods_api.clone(), config)), {
                let (changed, dirty, pod_events) = (changed.clone(), dirty.clone(), pod_events.clone());
                move |pod: Option<&Pod>, _deleted: bool| {
                    pod_events.fetch_add(1, Ordering::SeqCst);
                    mark_dirty(&dirty, pod.map(|p| p.labels().get(JOB_NAME_LABEL).cloned().unwrap_or_default()));
                    changed.notify_one();
                }
            }),
        ];
        let synced = async {
            jobs.wait_until_ready().await?;
            pods.wait_until_ready().await
        };
        tokio::time::timeout(Duration::from_secs(60), synced)
            .await
            .with_context(|| format!("listing Jobs and pods in namespace {ns} took over 60 s (is the apiserver reachable?)"))?
            .context("watch ended before its first listing")?;
        tracing::info!(namespace = %ns, jobs = jobs.state().len(), pods = pods.state().len(), "kubernetes backend watching");
        Ok(KubeBackend {
            jobs_api,
            pods_api,
            recorder,
            jobs,
            pods,
            changed,
            dirty,
            ends,
            gpus_freed,
            pod_events,
            pods_by_job: Mutex::default(),
            settings,
            db,
            granted: Mutex::new(HashMap::new()),
            seen: Mutex::default(),
            watchers,
        })
    }

    fn job(&self, name: &str) -> Option<Arc<Job>> {
        self.jobs.get(&ObjectRef::new(name).within(&self.settings.job.namespace))
    }

    /// A Job's pods from the index the observe sweep refreshes once per pass (cheap at 10,000
    /// Jobs; at most one pass old).
    fn pods_of(&self, job: &str) -> Vec<Arc<Pod>> {
        let index = self.pods_by_job.lock().unwrap();
        index.1.get(job).cloned().unwrap_or_default()
    }

    /// A Job's pods as the watch has them now.
    fn pods_of_now(&self, job: &str) -> Vec<Arc<Pod>> {
        self.pods.state().into_iter().filter(|p| p.labels().get(JOB_NAME_LABEL).map(String::as_str) == Some(job)).collect()
    }

    fn refresh_pod_index(&self) {
        let events = self.pod_events.load(Ordering::SeqCst);
        let mut index = self.pods_by_job.lock().unwrap();
        if index.0 != events {
            let mut by_job: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
            for pod in self.pods.state() {
                if let Some(job) = pod.labels().get(JOB_NAME_LABEL) {
                    by_job.entry(job.clone()).or_default().push(pod);
                }
            }
            *index = (events, by_job);
        }
    }

    /// GPU pods in use or granted: unfinished, unsuspended GPU Jobs' parallelism × gpus.
    fn gpu_in_use(&self) -> u32 {
        let granted = self.granted.lock().unwrap();
        let mut total = 0;
        let mut seen = std::collections::HashSet::new();
        for job in self.jobs.state() {
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
        self.pods_of(job)
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
            let pod = self.pods.get(&ObjectRef::new(&row.id).within(&self.settings.job.namespace));
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
                        if let Some(job) = self.job(&row.handle) {
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

fn spawn_reflector<S, K>(what: &'static str, stream: S, on_event: impl Fn(Option<&K>, bool) + Send + 'static) -> JoinHandle<()>
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let stream = stream.default_backoff();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match &event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => on_event(Some(obj), false),
                Ok(watcher::Event::Delete(obj)) => on_event(Some(obj), true),
                // A (re)list: anything may have changed.
                Ok(watcher::Event::Init | watcher::Event::InitDone) => on_event(None, false),
                Err(e) => {
                    tracing::warn!("watching {what}: {e}");
                    on_event(None, false);
                }
            }
        }
    })
}

/// Note that `job` changed (`None`: possibly every Job).
fn mark_dirty(dirty: &Mutex<Option<HashSet<String>>>, job: Option<String>) {
    let mut dirty = dirty.lock().unwrap();
    match (dirty.as_mut(), job) {
        (Some(jobs), Some(job)) => {
            jobs.insert(job);
        }
        (Some(_), None) => *dirty = None,
        (None, _) => {}
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

fn job_gpus(job: &Job) -> u32 {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().filter_map(|c| c.resources.as_ref()?.limits.as_ref()?.get(GPU_RESOURCE)?.0.parse::<u32>().ok()).sum())
        .unwrap_or(0)
}

fn container_exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == job_spec::CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
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

impl Backend for KubeBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn runner_id(&self, proof_id: &str, stages: &[Stage], attempt: u32) -> String {
        job_name(proof_id, &group_name(stages), attempt)
    }

    fn changed(&self) -> Option<Arc<Notify>> {
        Some(self.changed.clone())
    }

    fn take_ended(&self) -> bool {
        self.ends.swap(false, Ordering::SeqCst)
    }

    fn take_changed(&self) -> Option<HashSet<String>> {
        self.refresh_pod_index();
        let mut changed = self.dirty.lock().unwrap().replace(HashSet::new());
        if self.gpus_freed.swap(false, Ordering::SeqCst) {
            if let Some(changed) = changed.as_mut() {
                let queued = self.jobs.state().into_iter().filter(|j| j.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false));
                changed.extend(queued.map(|j| j.name_any()));
            }
        }
        changed
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
        if let Some(job) = self.job(job_of(runner)) {
            self.event(&job, note.warning, note.reason, note.message.clone()).await;
        }
    }

    async fn stop(&self, runner: &RunnerRow) -> Result<()> {
        let name = job_of(runner);
        if self.job(name).is_some_and(|j| j.metadata.deletion_timestamp.is_some() || finished(&j).is_some()) {
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
            let outcome = match self.job(name) {
                Some(job) => {
                    self.seen.lock().unwrap().insert(name.to_string());
                    match finished(&job) {
                        Some(JobEnd::Complete) => Some(Some(exit::DONE)),
                        // The code the deciding pod's runner exited with, as its container status says.
                        Some(JobEnd::Failed) => Some(view::deciding_exit_code(&self.pods_of_now(name))),
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
        let Some(job) = self.job(&name) else { return Ok(None) };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(conditions: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
            "spec": {"template": {"spec": {"containers": [{"name": "task-runner", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}}},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn only_final_conditions_finish_a_job() {
        assert_eq!(finished(&job(serde_json::json!([{"type": "Complete", "status": "True"}]))), Some(JobEnd::Complete));
        assert_eq!(finished(&job(serde_json::json!([{"type": "SuccessCriteriaMet", "status": "True"}]))), None);
        assert_eq!(finished(&job(serde_json::json!([{"type": "FailureTarget", "status": "True"}]))), None);
        let failed = job(serde_json::json!([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]));
        assert_eq!(finished(&failed), Some(JobEnd::Failed));
        assert_eq!(job_gpus(&failed), 2);
    }
}
