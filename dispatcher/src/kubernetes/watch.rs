//! The backend's view of its Jobs and pods: kube-runtime reflectors (watches, not polling), plus
//! what the dispatcher needs to know cheaply from their events — whether a Job ended (a full pass
//! is due), which Jobs changed (the observe sweep visits only those), whether GPUs were freed
//! (suspended GPU Jobs are due for a look) — and an index of pods by Job.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    runtime::{reflector, reflector::ObjectRef, watcher, WatchStreamExt},
    Api, ResourceExt,
};
use proofjobs_pipeline::stage::labels;
use tokio::{sync::Notify, task::JoinHandle};

use super::view::{finished, job_gpus};

/// The label the Job controller puts on a Job's pods.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// Pods by Job name, as of a count of pod watch events.
type PodIndex = (u64, HashMap<String, Vec<Arc<Pod>>>);

pub struct Watch {
    namespace: String,
    jobs: reflector::Store<Job>,
    pods: reflector::Store<Pod>,
    /// Woken by every event.
    pub changed: Arc<Notify>,
    /// Jobs whose Job or pods changed since the observe sweep last asked (`None`: all of them).
    dirty: Arc<Mutex<Option<HashSet<String>>>>,
    /// Set when a Job finished or vanished (or the watch relisted): a full pass is due.
    ends: Arc<AtomicBool>,
    /// Set when a GPU Job finished or vanished: suspended GPU Jobs are due for a look.
    gpus_freed: Arc<AtomicBool>,
    /// Bumped by every pod event, so the pods-by-Job index is rebuilt only when pods changed.
    pod_events: Arc<AtomicU64>,
    pods_by_job: Mutex<PodIndex>,
    watchers: Vec<JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

impl Watch {
    /// Start the Job and pod reflectors (objects labelled as ours) and wait for their first full
    /// listing, so adoption after a restart sees every Job that exists.
    pub async fn start(jobs_api: Api<Job>, pods_api: Api<Pod>, namespace: &str) -> Result<Watch> {
        let selector = format!("{}={}", labels::MANAGED_BY, labels::MANAGER);
        let changed = Arc::new(Notify::new());
        let dirty: Arc<Mutex<Option<HashSet<String>>>> = Arc::new(Mutex::new(None));
        let ends = Arc::new(AtomicBool::new(true));
        let gpus_freed = Arc::new(AtomicBool::new(false));
        let pod_events = Arc::new(AtomicU64::new(1));
        let (jobs, jobs_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let config = watcher::Config::default().labels(&selector);
        let watchers = vec![
            spawn_reflector("jobs", reflector(jobs_writer, watcher(jobs_api, config.clone())), {
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
            spawn_reflector("pods", reflector(pods_writer, watcher(pods_api, config)), {
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
            .with_context(|| format!("listing Jobs and pods in namespace {namespace} took over 60 s (is the apiserver reachable?)"))?
            .context("watch ended before its first listing")?;
        tracing::info!(namespace, jobs = jobs.state().len(), pods = pods.state().len(), "kubernetes backend watching");
        Ok(Watch {
            namespace: namespace.to_string(),
            jobs,
            pods,
            changed,
            dirty,
            ends,
            gpus_freed,
            pod_events,
            pods_by_job: Mutex::default(),
            watchers,
        })
    }

    pub fn job(&self, name: &str) -> Option<Arc<Job>> {
        self.jobs.get(&ObjectRef::new(name).within(&self.namespace))
    }

    pub fn jobs(&self) -> Vec<Arc<Job>> {
        self.jobs.state()
    }

    pub fn pod(&self, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// A Job's pods from the index each observe sweep refreshes (cheap at 10,000 Jobs; at most
    /// one sweep old).
    pub fn pods_of(&self, job: &str) -> Vec<Arc<Pod>> {
        self.pods_by_job.lock().unwrap().1.get(job).cloned().unwrap_or_default()
    }

    /// A Job's pods as the watch has them now.
    pub fn pods_of_now(&self, job: &str) -> Vec<Arc<Pod>> {
        self.pods.state().into_iter().filter(|p| p.labels().get(JOB_NAME_LABEL).map(String::as_str) == Some(job)).collect()
    }

    /// Whether a Job ended (or the watch relisted) since the last call.
    pub fn take_ended(&self) -> bool {
        self.ends.swap(false, Ordering::SeqCst)
    }

    /// Jobs changed since the last call (`None`: possibly all), with every suspended Job when GPUs
    /// were freed meanwhile. Refreshes the pod index.
    pub fn take_changed(&self) -> Option<HashSet<String>> {
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
