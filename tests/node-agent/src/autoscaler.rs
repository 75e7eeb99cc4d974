//! A stand-in for cluster-autoscaler / Karpenter over the fake fleet.
//!
//! Scale-up: a pod the scheduler marked Unschedulable that would fit a pool (node selector and
//! required node affinity against the pool's labels, tolerations against its taints, requests
//! within one node's capacity) makes that pool add a node after `--scale-up-delay-ms`, within
//! the pool's max. Pending pods are packed onto nodes already on their way, so one node is
//! requested per node's worth of pods, not per pod. Scale-down: a node above its pool's min
//! with no non-terminal pod for `--idle-secs` is removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, Pod, ResourceRequirements, Taint, Toleration};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::pool::{PoolSpec, GPU_RESOURCE};
use crate::{quantity, status};

const TICK: Duration = Duration::from_millis(500);
/// After a requested node is up, its pods are left to the scheduler this long before they may
/// ask for another node.
const SETTLE: Duration = Duration::from_secs(15);

/// What a pod asks of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub cpu_millis: u64,
    pub memory: u64,
    pub gpus: u64,
}

impl Requests {
    pub fn of_pool(pool: &PoolSpec) -> Self {
        Requests { cpu_millis: pool.cpu_millis(), memory: pool.memory_bytes(), gpus: u64::from(pool.gpus) }
    }

    pub fn covers(&self, other: &Requests) -> bool {
        self.cpu_millis >= other.cpu_millis && self.memory >= other.memory && self.gpus >= other.gpus
    }

    fn take(&mut self, other: &Requests) {
        self.cpu_millis = self.cpu_millis.saturating_sub(other.cpu_millis);
        self.memory = self.memory.saturating_sub(other.memory);
        self.gpus = self.gpus.saturating_sub(other.gpus);
    }
}

fn container_requests(res: Option<&ResourceRequirements>) -> Requests {
    let Some(res) = res else {
        return Requests::default();
    };
    // A missing request defaults to the limit (the apiserver does the same).
    let get = |name: &str| {
        res.requests.as_ref().and_then(|r| r.get(name)).or_else(|| res.limits.as_ref().and_then(|l| l.get(name))).map(|q| q.0.clone())
    };
    Requests {
        cpu_millis: get("cpu").and_then(|q| quantity::cpu_millis(&q)).unwrap_or(0),
        memory: get("memory").and_then(|q| quantity::bytes(&q)).unwrap_or(0),
        gpus: get(GPU_RESOURCE).and_then(|q| quantity::parse(&q)).map(|v| v.ceil() as u64).unwrap_or(0),
    }
}

/// Effective requests: the sum over containers, at least the largest init container.
pub fn pod_requests(pod: &Pod) -> Requests {
    let Some(spec) = pod.spec.as_ref() else {
        return Requests::default();
    };
    let mut total = Requests::default();
    for c in &spec.containers {
        let r = container_requests(c.resources.as_ref());
        total.cpu_millis += r.cpu_millis;
        total.memory += r.memory;
        total.gpus += r.gpus;
    }
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c.resources.as_ref());
        total.cpu_millis = total.cpu_millis.max(r.cpu_millis);
        total.memory = total.memory.max(r.memory);
        total.gpus = total.gpus.max(r.gpus);
    }
    total
}

/// Pending, unbound, not being deleted, and marked `PodScheduled=False reason=Unschedulable`.
pub fn is_unschedulable(pod: &Pod) -> bool {
    let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    if bound || status::is_deleting(pod) || status::phase(pod) != "Pending" {
        return false;
    }
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
    })
}

/// Whether a toleration tolerates a taint (the scheduler's rules).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" => key == taint.key && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, labels: &std::collections::BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key);
    let values = req.values.as_deref().unwrap_or(&[]);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => !value.is_some_and(|v| values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok()))
            else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a new node of `pool` could take `pod`.
pub fn fits(pod: &Pod, pool: &PoolSpec) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let labels = pool.labels();

    // nodeSelector ⊆ pool labels.
    if let Some(sel) = &spec.node_selector {
        if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    // Required node affinity: terms are ORed, expressions within a term ANDed. A term with
    // matchFields names specific nodes, which a new node never is.
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    if let Some(required) = required {
        let any = required.node_selector_terms.iter().any(|term| {
            term.match_fields.as_ref().is_none_or(|f| f.is_empty())
                && term.match_expressions.iter().flatten().all(|r| requirement_matches(r, &labels))
        });
        if !any {
            return false;
        }
    }
    // Every NoSchedule/NoExecute taint must be tolerated.
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    for taint in pool.taints() {
        if taint.effect == "PreferNoSchedule" {
            continue;
        }
        if !tolerations.iter().any(|t| tolerates(t, &taint)) {
            return false;
        }
    }
    Requests::of_pool(pool).covers(&pod_requests(pod))
}

/// A node requested for some pending pods.
struct Provisioning {
    id: u64,
    pool: String,
    remaining: Requests,
    pods: HashSet<String>,
    node: Option<String>,
    up_at: Option<Instant>,
}

pub struct Autoscaler {
    fleet: Arc<Fleet>,
    scale_up_delay: Duration,
    idle: Duration,
}

impl Autoscaler {
    pub fn new(fleet: Arc<Fleet>, scale_up_delay: Duration, idle: Duration) -> Self {
        Self { fleet, scale_up_delay, idle }
    }

    pub async fn run(self, client: kube::Client, cancel: CancellationToken) {
        let (store, writer) = reflector::store::<Pod>();
        let api: Api<Pod> = Api::all(client);
        let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()).default_backoff())
            .touched_objects()
            .for_each(|res| async move {
                if let Err(err) = res {
                    tracing::warn!(%err, "autoscaler pod watch error (retrying)");
                }
            });
        let watch = tokio::spawn(stream);
        tokio::select! {
            _ = cancel.cancelled() => { watch.abort(); return; }
            res = store.wait_until_ready() => if res.is_err() { return },
        }
        self.control_loop(store, cancel).await;
        watch.abort();
    }

    async fn control_loop(&self, store: Store<Pod>, cancel: CancellationToken) {
        let mut provisioning: Vec<Provisioning> = Vec::new();
        let mut next_id = 0u64;
        let mut adding: JoinSet<(u64, anyhow::Result<String>)> = JoinSet::new();
        let mut last_busy: HashMap<String, Instant> = HashMap::new();
        let mut reported: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            self.fleet.forget_lost_nodes();
            tokio::select! {
                _ = cancel.cancelled() => { adding.abort_all(); return; }
                Some(done) = adding.join_next(), if !adding.is_empty() => {
                    let Ok((id, result)) = done else { continue };
                    match result {
                        Ok(node) => {
                            if let Some(p) = provisioning.iter_mut().find(|p| p.id == id) {
                                p.node = Some(node.clone());
                                p.up_at = Some(Instant::now());
                            }
                            last_busy.insert(node, Instant::now());
                        }
                        Err(err) => {
                            tracing::warn!("scale-up failed: {err:#}");
                            provisioning.retain(|p| p.id != id);
                        }
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }

            let now = Instant::now();
            let pods = store.state();
            provisioning.retain(|p| p.up_at.is_none_or(|t| now.duration_since(t) < SETTLE));

            // Scale up.
            let claimed: HashSet<String> = provisioning.iter().flat_map(|p| p.pods.iter().cloned()).collect();
            'pods: for pod in pods.iter().filter(|p| is_unschedulable(p)) {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                if claimed.contains(&uid) {
                    continue;
                }
                let req = pod_requests(pod);
                for pool in self.fleet.pools().iter().filter(|pool| fits(pod, pool)) {
                    // Pack onto a node of this pool that is already coming.
                    if let Some(p) = provisioning.iter_mut().find(|p| p.pool == pool.name && p.up_at.is_none() && p.remaining.covers(&req))
                    {
                        p.remaining.take(&req);
                        p.pods.insert(uid);
                        continue 'pods;
                    }
                    let coming = provisioning.iter().filter(|p| p.pool == pool.name && p.up_at.is_none()).count();
                    if self.fleet.count(&pool.name) + coming < pool.max {
                        next_id += 1;
                        let mut remaining = Requests::of_pool(pool);
                        remaining.take(&req);
                        provisioning.push(Provisioning {
                            id: next_id,
                            pool: pool.name.clone(),
                            remaining,
                            pods: [uid].into_iter().collect(),
                            node: None,
                            up_at: None,
                        });
                        tracing::info!(pool = %pool.name, pod = ?pod.metadata.name, delay_ms = self.scale_up_delay.as_millis() as u64,
                            "unschedulable pod: scaling up");
                        let fleet = self.fleet.clone();
                        let pool_name = pool.name.clone();
                        let delay = self.scale_up_delay;
                        let id = next_id;
                        adding.spawn(async move {
                            tokio::time::sleep(delay).await;
                            (id, fleet.add_node(&pool_name).await)
                        });
                        continue 'pods;
                    }
                }
                if reported.insert(uid) {
                    tracing::info!(pod = ?pod.metadata.name, namespace = ?pod.metadata.namespace,
                        "unschedulable pod fits no pool with room; not scaling");
                }
            }
            if reported.len() > 10_000 {
                reported.clear();
            }

            // Scale down.
            let busy_nodes: HashSet<&str> = pods
                .iter()
                .filter(|p| !status::is_terminal(p))
                .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()))
                .collect();
            let fresh: HashSet<&str> = provisioning.iter().filter_map(|p| p.node.as_deref()).collect();
            let nodes = self.fleet.nodes();
            last_busy.retain(|n, _| nodes.iter().any(|(name, _)| name == n));
            for (node, pool_name) in nodes {
                if busy_nodes.contains(node.as_str()) || fresh.contains(node.as_str()) {
                    last_busy.insert(node, now);
                    continue;
                }
                let since = *last_busy.entry(node.clone()).or_insert(now);
                let min = self.fleet.pools().iter().find(|p| p.name == pool_name).map(|p| p.min).unwrap_or(0);
                if now.duration_since(since) < self.idle || self.fleet.count(&pool_name) <= min {
                    continue;
                }
                tracing::info!(node = %node, pool = %pool_name, idle_s = now.duration_since(since).as_secs(), "idle node: scaling down");
                match self.fleet.remove_idle_node(&node).await {
                    Ok(true) => {
                        last_busy.remove(&node);
                    }
                    Ok(false) => {
                        last_busy.insert(node, Instant::now());
                    }
                    Err(err) => {
                        tracing::warn!(node = %node, "scale-down failed: {err:#}");
                        last_busy.insert(node, Instant::now());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cpu_pool() -> PoolSpec {
        "cpu:min=1,max=2,cpu=16,memory=64Gi".parse().unwrap()
    }

    fn gpu_pool() -> PoolSpec {
        "gpu:min=0,max=2,cpu=16,memory=64Gi,gpus=1".parse().unwrap()
    }

    fn pending(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "i"}]);
        }
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": spec,
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available"}
            ]}
        }))
        .unwrap()
    }

    fn gpu_toleration() -> serde_json::Value {
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    }

    #[test]
    fn unschedulable_detection() {
        assert!(is_unschedulable(&pending(json!({}))));
        let mut bound = pending(json!({"nodeName": "cpu-1"}));
        assert!(!is_unschedulable(&bound));
        bound.spec.as_mut().unwrap().node_name = None;
        bound.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].reason = Some("SchedulerError".into());
        assert!(!is_unschedulable(&bound));
        let no_cond: Pod = serde_json::from_value(json!({"spec": {"containers": []}, "status": {"phase": "Pending"}})).unwrap();
        assert!(!is_unschedulable(&no_cond));
    }

    #[test]
    fn plain_pod_fits_cpu_not_gpu() {
        let pod = pending(json!({}));
        assert!(fits(&pod, &cpu_pool()));
        assert!(!fits(&pod, &gpu_pool()), "gpu taint not tolerated");
    }

    #[test]
    fn gpu_pod_needs_gpu_pool() {
        let pod = pending(json!({
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": gpu_toleration(),
            "containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
        }));
        assert!(fits(&pod, &gpu_pool()));
        assert!(!fits(&pod, &cpu_pool()));
        assert_eq!(pod_requests(&pod).gpus, 1);

        let two = pending(json!({
            "tolerations": gpu_toleration(),
            "containers": [{"name": "c", "image": "i", "resources": {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}}]
        }));
        assert!(!fits(&two, &gpu_pool()), "needs 2 gpus, pool nodes have 1");
        // A gpu request without a toleration cannot go anywhere.
        let untolerated = pending(json!({
            "containers": [{"name": "c", "image": "i", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
        }));
        assert!(!fits(&untolerated, &gpu_pool()));
        assert!(!fits(&untolerated, &cpu_pool()));
    }

    #[test]
    fn selectors_and_affinity() {
        let by_pool = pending(json!({"nodeSelector": {"proofjobs.io/pool": "cpu", "kubernetes.io/os": "linux"}}));
        assert!(fits(&by_pool, &cpu_pool()));
        let other = pending(json!({"nodeSelector": {"proofjobs.io/pool": "other"}}));
        assert!(!fits(&other, &cpu_pool()));
        let affinity = |op: &str, values: serde_json::Value| {
            pending(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "proofjobs.io/pool", "operator": op, "values": values}]}]
            }}}}))
        };
        assert!(fits(&affinity("In", json!(["cpu", "x"])), &cpu_pool()));
        assert!(!fits(&affinity("NotIn", json!(["cpu"])), &cpu_pool()));
        assert!(fits(&affinity("Exists", json!(null)), &cpu_pool()));
        assert!(!fits(&affinity("DoesNotExist", json!(null)), &cpu_pool()));
    }

    #[test]
    fn requests_must_fit_one_node() {
        let big = pending(json!({"containers": [
            {"name": "a", "image": "i", "resources": {"requests": {"cpu": "12", "memory": "32Gi"}}},
            {"name": "b", "image": "i", "resources": {"requests": {"cpu": "6"}}}
        ]}));
        assert_eq!(pod_requests(&big), Requests { cpu_millis: 18_000, memory: 32 << 30, gpus: 0 });
        assert!(!fits(&big, &cpu_pool()));
        let ok = pending(json!({
            "initContainers": [{"name": "i", "image": "i", "resources": {"requests": {"memory": "60Gi"}}}],
            "containers": [{"name": "a", "image": "i", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}}]
        }));
        assert_eq!(pod_requests(&ok), Requests { cpu_millis: 500, memory: 60 << 30, gpus: 0 });
        assert!(fits(&ok, &cpu_pool()));
    }

    #[test]
    fn toleration_rules() {
        let taint = Taint { key: "k".into(), value: Some("v".into()), effect: "NoSchedule".into(), time_added: None };
        let t = |v: serde_json::Value| -> Toleration { serde_json::from_value(v).unwrap() };
        assert!(tolerates(&t(json!({"key": "k", "value": "v"})), &taint));
        assert!(tolerates(&t(json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"})), &taint));
        assert!(!tolerates(&t(json!({"key": "k", "value": "other"})), &taint));
        assert!(!tolerates(&t(json!({"key": "k", "value": "v", "effect": "NoExecute"})), &taint));
        assert!(tolerates(&t(json!({"key": "k", "operator": "Exists"})), &taint));
        assert!(tolerates(&t(json!({"operator": "Exists"})), &taint));
        assert!(!tolerates(&t(json!({"key": "j", "operator": "Exists"})), &taint));
    }

    #[test]
    fn packing_arithmetic() {
        let mut r = Requests::of_pool(&gpu_pool());
        let one = Requests { cpu_millis: 8000, memory: 1 << 30, gpus: 1 };
        assert!(r.covers(&one));
        r.take(&one);
        assert!(!r.covers(&one), "the single gpu is taken");
        assert!(r.covers(&Requests { cpu_millis: 8000, memory: 0, gpus: 0 }));
    }
}
