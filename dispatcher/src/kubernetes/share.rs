//! Who gets the next GPU. GPU pods are capped (`--max-gpu-pods`: the GPU pool's size or budget),
//! so when more GPU Jobs want pods than the cap allows, the free GPUs are handed out one pod at a
//! time to the highest requester priority, then to the requester that has least per unit of
//! weight, then to that requester's Job with fewest pods, then to the oldest. One requester's
//! twenty proofs therefore cannot starve another's single proof: the newcomer's Job takes the next
//! GPU that frees up. A requester's GPU runner quota caps its pods whatever is free. Running pods
//! are never taken back here (idle ones leave by themselves; preempting is the Kubernetes
//! scheduler's job, by PriorityClass).
//!
//! Every input is read from the Jobs themselves (requester label, weight and quota
//! annotations), so each decision is a pure function of what the watch shows.

use std::collections::HashMap;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use proofjobs_pipeline::{stage::labels, state::Priority};

use super::view::{finished, job_gpus};

/// A GPU Job as the allocation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuJob {
    pub name: String,
    pub requester: String,
    pub weight: u32,
    pub max_gpu_runners: Option<u32>,
    pub priority: Priority,
    pub gpus_per_pod: u32,
    /// Pods it runs or was granted (0 while suspended).
    pub pods: u32,
    /// Pods it would run if it could.
    pub wanted: u32,
}

impl GpuJob {
    /// An unfinished GPU Job from the watch, wanting what it has (or one pod while suspended);
    /// `None` for CPU Jobs and Jobs that are done or going away.
    pub fn of(job: &Job) -> Option<GpuJob> {
        let gpus_per_pod = job_gpus(job);
        if gpus_per_pod == 0 || finished(job).is_some() || job.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let spec = job.spec.as_ref();
        let pods =
            if spec.and_then(|s| s.suspend).unwrap_or(false) { 0 } else { spec.and_then(|s| s.parallelism).unwrap_or(1).max(0) as u32 };
        let annotation = |key: &str| job.annotations().get(key).and_then(|v| v.parse::<u32>().ok());
        Some(GpuJob {
            name: job.name_any(),
            requester: job.labels().get(labels::REQUESTER).cloned().unwrap_or_default(),
            weight: annotation(labels::WEIGHT).unwrap_or(1).max(1),
            max_gpu_runners: annotation(labels::MAX_GPU_RUNNERS),
            priority: job.annotations().get(labels::PRIORITY).and_then(|p| p.parse().ok()).unwrap_or_default(),
            gpus_per_pod,
            pods,
            wanted: pods.max(1),
        })
    }
}

/// What a Job may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Pods(u32),
    /// No GPU free for it under the cap.
    Queued,
    /// Its requester is at its GPU runner quota.
    OverQuota,
}

/// Each Job's grant, in the order given (oldest first). Jobs keep the pods they have.
pub fn allocate(jobs: &[GpuJob], max_gpus: u32) -> Vec<Grant> {
    let mut gpus_of: HashMap<&str, u64> = HashMap::new();
    let mut pods_of: HashMap<&str, u32> = HashMap::new();
    let mut weight_of: HashMap<&str, u64> = HashMap::new();
    let mut quota_of: HashMap<&str, Option<u32>> = HashMap::new();
    for job in jobs {
        *gpus_of.entry(&job.requester).or_default() += u64::from(job.pods * job.gpus_per_pod);
        *pods_of.entry(&job.requester).or_default() += job.pods;
        // The newest Job carries the requester's current settings.
        weight_of.insert(&job.requester, u64::from(job.weight.max(1)));
        quota_of.insert(&job.requester, job.max_gpu_runners);
    }
    let mut free = u64::from(max_gpus).saturating_sub(gpus_of.values().sum());
    let mut got: Vec<u32> = jobs.iter().map(|j| j.pods).collect();
    let under_quota = |pods_of: &HashMap<&str, u32>, job: &GpuJob| {
        quota_of[job.requester.as_str()].is_none_or(|max| pods_of[job.requester.as_str()] < max)
    };
    loop {
        let next = (0..jobs.len())
            .filter(|&i| got[i] < jobs[i].wanted && u64::from(jobs[i].gpus_per_pod) <= free && under_quota(&pods_of, &jobs[i]))
            .min_by(|&a, &b| {
                let (ra, rb) = (jobs[a].requester.as_str(), jobs[b].requester.as_str());
                // Higher priority first; then served_a / weight_a against served_b / weight_b,
                // without division.
                jobs[b]
                    .priority
                    .cmp(&jobs[a].priority)
                    .then((gpus_of[ra] * weight_of[rb]).cmp(&(gpus_of[rb] * weight_of[ra])))
                    .then(got[a].cmp(&got[b]))
                    .then(a.cmp(&b))
            });
        let Some(i) = next else { break };
        let job = &jobs[i];
        got[i] += 1;
        free -= u64::from(job.gpus_per_pod);
        *gpus_of.get_mut(job.requester.as_str()).unwrap() += u64::from(job.gpus_per_pod);
        *pods_of.get_mut(job.requester.as_str()).unwrap() += 1;
    }
    jobs.iter()
        .zip(got)
        .map(|(job, pods)| match pods {
            0 if !under_quota(&pods_of, job) => Grant::OverQuota,
            0 => Grant::Queued,
            n => Grant::Pods(n),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, requester: &str, pods: u32, wanted: u32) -> GpuJob {
        GpuJob {
            name: name.into(),
            requester: requester.into(),
            weight: 1,
            max_gpu_runners: None,
            priority: Priority::Normal,
            gpus_per_pod: 1,
            pods,
            wanted,
        }
    }

    #[test]
    fn a_newcomer_takes_the_next_free_gpu_before_a_busy_requesters_queue() {
        // a holds both GPUs of the cap and has eight more Jobs waiting; b arrives with one.
        let mut jobs: Vec<GpuJob> = (0..10).map(|i| job(&format!("a{i}"), "a", u32::from(i < 2), 1)).collect();
        jobs.push(job("b0", "b", 0, 1));
        let grants = allocate(&jobs, 2);
        assert_eq!(grants[..2], [Grant::Pods(1), Grant::Pods(1)]);
        assert!(grants[2..].iter().all(|g| *g == Grant::Queued), "{grants:?}");
        // One of a's Jobs ends: the freed GPU goes to b, not to a's oldest waiting Job.
        jobs.remove(0);
        let grants = allocate(&jobs, 2);
        assert_eq!(grants.last(), Some(&Grant::Pods(1)));
        assert_eq!(grants.iter().filter(|g| matches!(g, Grant::Pods(_))).count(), 2);
        // The next one to free goes back to a, its oldest waiting Job first.
        jobs.remove(0);
        jobs.last_mut().unwrap().pods = 1;
        let grants = allocate(&jobs, 2);
        assert_eq!(grants[0], Grant::Pods(1), "a2 was waiting longest: {grants:?}");
    }

    #[test]
    fn a_higher_priority_takes_the_next_free_gpu_whatever_it_already_has() {
        // urgent already holds one GPU of three; normal requesters hold the other two and wait
        // for more. The next free GPU goes to urgent's waiting Job, not to the least served.
        let urgent = |name: &str, pods| GpuJob { priority: Priority::High, ..job(name, "urgent", pods, 1) };
        let mut jobs = vec![job("a0", "a", 1, 1), job("b0", "b", 1, 1), urgent("u0", 1), job("c0", "c", 0, 1), urgent("u1", 0)];
        assert_eq!(allocate(&jobs, 3)[3..], [Grant::Queued, Grant::Queued]);
        jobs.remove(0);
        assert_eq!(allocate(&jobs, 3)[2..], [Grant::Queued, Grant::Pods(1)], "urgent's Job first");
        // A low-priority requester waits behind everyone, even holding nothing.
        let batch = GpuJob { priority: Priority::Low, ..job("l0", "batch", 0, 1) };
        assert_eq!(allocate(&[job("a1", "a", 5, 6), batch.clone()], 6), vec![Grant::Pods(6), Grant::Queued]);
        assert_eq!(allocate(&[job("a1", "a", 5, 6), batch], 7), vec![Grant::Pods(6), Grant::Pods(1)]);
    }

    #[test]
    fn contended_gpus_split_by_weight() {
        // Eight GPUs, both requesters want many: weight 3 against 1 gets 6 against 2.
        let mut heavy = job("h", "heavy", 0, 100);
        heavy.weight = 3;
        let light = job("l", "light", 0, 100);
        assert_eq!(allocate(&[heavy, light], 8), vec![Grant::Pods(6), Grant::Pods(2)]);
    }

    #[test]
    fn a_requester_at_its_gpu_quota_waits_over_quota_while_others_use_the_room() {
        let mut a1 = job("a1", "a", 1, 1);
        a1.max_gpu_runners = Some(1);
        let a2 = GpuJob { max_gpu_runners: Some(1), ..job("a2", "a", 0, 1) };
        let b1 = job("b1", "b", 0, 3);
        assert_eq!(allocate(&[a1.clone(), a2.clone(), b1], 4), vec![Grant::Pods(1), Grant::OverQuota, Grant::Pods(3)]);
        // Free room alone does not lift the quota.
        assert_eq!(allocate(&[a1, a2], 16)[1], Grant::OverQuota);
    }

    #[test]
    fn running_jobs_keep_their_pods_and_grow_only_into_free_room() {
        // Over the cap already (the cap was lowered): nothing is taken back, nothing grows.
        let jobs = [job("a", "a", 3, 5), job("b", "b", 0, 1)];
        assert_eq!(allocate(&jobs, 2), vec![Grant::Pods(3), Grant::Queued]);
        // Room for two more: b's waiting Job first (b has nothing), then a grows by one.
        assert_eq!(allocate(&jobs, 5), vec![Grant::Pods(4), Grant::Pods(1)]);
        // Multi-GPU pods need their whole count free.
        let big = GpuJob { gpus_per_pod: 4, ..job("big", "c", 0, 1) };
        assert_eq!(allocate(&[job("a", "a", 3, 3), big], 6), vec![Grant::Pods(3), Grant::Queued]);
    }
}
