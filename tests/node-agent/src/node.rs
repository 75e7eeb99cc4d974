//! One fake node: its Node object, its heartbeats, and the pods bound to it.
//!
//! Registration writes a Node that looks like a kubelet's (labels, taints, capacity, Ready,
//! addresses, the log server as kubelet endpoint). While the node runs it renews its Lease in
//! `kube-node-lease` (what the node lifecycle controller watches), refreshes Ready, and watches
//! `spec.nodeName=<node>` pods, handing each pod UID to a [`crate::worker`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::context::AgentContext;
use crate::pod::LOOPBACK;
use crate::pool::PoolSpec;
use crate::worker;

pub const FIELD_MANAGER: &str = "proofjobs-node-agent";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECS: i32 = 40;
const KUBELET_VERSION: &str = "v1.34.0-node-agent";
const WORKER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The Node object, without status (status is a subresource, written separately).
pub fn node_object(name: &str, pool: &PoolSpec) -> Node {
    let taints = pool.taints();
    Node {
        metadata: ObjectMeta { name: Some(name.to_string()), labels: Some(pool.node_labels(name)), ..Default::default() },
        spec: Some(NodeSpec { taints: if taints.is_empty() { None } else { Some(taints) }, ..Default::default() }),
        status: None,
    }
}

/// Conditions of a healthy node. `since` is when Ready became true.
pub fn conditions(heartbeat: Timestamp, since: Timestamp) -> Vec<NodeCondition> {
    let cond = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(Time(heartbeat)),
        last_transition_time: Some(Time(since)),
    };
    vec![
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        cond("Ready", "True", "KubeletReady", "node agent is posting ready status"),
    ]
}

/// The full node status.
pub fn node_status(name: &str, pool: &PoolSpec, log_port: u16, heartbeat: Timestamp, since: Timestamp) -> NodeStatus {
    NodeStatus {
        capacity: Some(pool.capacity()),
        allocatable: Some(pool.capacity()),
        conditions: Some(conditions(heartbeat, since)),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".to_string(), address: LOOPBACK.to_string() },
            // The apiserver prefers the Hostname address when it dials the kubelet (for
            // `kubectl logs`); the node name does not resolve, "localhost" does.
            NodeAddress { type_: "Hostname".to_string(), address: "localhost".to_string() },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(log_port) }) }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".to_string(),
            boot_id: format!("boot-{name}"),
            container_runtime_version: "process://0.1.0".to_string(),
            kernel_version: "6.0.0-node-agent".to_string(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.to_string(),
            machine_id: format!("machine-{name}"),
            operating_system: "linux".to_string(),
            os_image: "proofjobs node-agent (processes)".to_string(),
            system_uuid: format!("uuid-{name}"),
            swap: None,
        }),
        ..Default::default()
    }
}

pub fn lease_object(node: &str, node_uid: &str, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node.to_string()),
            namespace: Some(LEASE_NAMESPACE.to_string()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".to_string(),
                kind: "Node".to_string(),
                name: node.to_string(),
                uid: node_uid.to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_string()),
            lease_duration_seconds: Some(LEASE_DURATION_SECS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Creates (or takes over) the Node and writes its status. Returns the Node's UID.
pub async fn register(ctx: &AgentContext, name: &str, pool: &PoolSpec) -> Result<String> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let node =
        api.patch(name, &apply_params(), &Patch::Apply(&node_object(name, pool))).await.with_context(|| format!("apply Node {name}"))?;
    let now = Timestamp::now();
    let status = node_status(name, pool, ctx.log_port, now, now);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await
        .with_context(|| format!("write Node {name} status"))?;
    let uid = node.metadata.uid.unwrap_or_default();
    renew_lease(ctx, name, &uid).await?;
    Ok(uid)
}

async fn renew_lease(ctx: &AgentContext, name: &str, node_uid: &str) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    api.patch(name, &apply_params(), &Patch::Apply(&lease_object(name, node_uid, Timestamp::now())))
        .await
        .with_context(|| format!("renew Lease {LEASE_NAMESPACE}/{name}"))?;
    Ok(())
}

/// Runs the node until `cancel` fires: heartbeats plus the pod watch. On cancel every pod
/// worker kills its process (best-effort terminal status) before this returns.
pub async fn run(ctx: Arc<AgentContext>, name: String, node_uid: String, pool: PoolSpec, cancel: CancellationToken) {
    let heartbeat = tokio::spawn(heartbeats(ctx.clone(), name.clone(), node_uid, pool, cancel.clone()));
    watch_pods(ctx, name.clone(), cancel).await;
    let _ = heartbeat.await;
    tracing::info!(node = %name, "node agent stopped");
}

async fn heartbeats(ctx: Arc<AgentContext>, name: String, node_uid: String, pool: PoolSpec, cancel: CancellationToken) {
    let since = Timestamp::now();
    let mut lease_tick = tokio::time::interval(ctx.lease_interval);
    let mut ready_tick = tokio::time::interval(ctx.ready_interval);
    lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ready_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = lease_tick.tick() => {
                if let Err(err) = renew_lease(&ctx, &name, &node_uid).await {
                    tracing::warn!(node = %name, "{err:#}");
                }
            }
            _ = ready_tick.tick() => {
                let status = node_status(&name, &pool, ctx.log_port, Timestamp::now(), since);
                let body = json!({"status": {"conditions": status.conditions, "daemonEndpoints": status.daemon_endpoints}});
                match nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body)).await {
                    Ok(_) => {}
                    // Someone deleted our Node: the machine is gone, and so are its processes.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        tracing::warn!(node = %name, "Node deleted from the API: stopping this node and its pods");
                        cancel.cancel();
                        return;
                    }
                    Err(err) => tracing::warn!(node = %name, %err, "Ready refresh failed"),
                }
            }
        }
    }
}

struct PodSlot {
    tx: watch::Sender<Option<Arc<Pod>>>,
}

async fn watch_pods(ctx: Arc<AgentContext>, node: String, cancel: CancellationToken) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut slots: HashMap<String, PodSlot> = HashMap::new();
    let mut workers = JoinSet::new();
    let mut listed: Option<HashSet<String>> = None;
    let workers_cancel = cancel.child_token();

    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = stream.next() => ev,
        };
        while workers.try_join_next().is_some() {}
        let Some(event) = event else { break };
        let event = match event {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(node = %node, %err, "pod watch error (retrying)");
                continue;
            }
        };
        let mut apply = |pod: Pod, slots: &mut HashMap<String, PodSlot>| {
            let Some(uid) = pod.metadata.uid.clone() else {
                tracing::warn!("pod event without metadata.uid ignored");
                return;
            };
            if let Some(slot) = slots.get(&uid) {
                slot.tx.send_replace(Some(Arc::new(pod)));
            } else {
                let (tx, rx) = watch::channel(Some(Arc::new(pod)));
                workers.spawn(worker::run(ctx.clone(), node.clone(), rx, workers_cancel.clone()));
                slots.insert(uid, PodSlot { tx });
            }
        };
        match event {
            Event::Init => listed = Some(HashSet::new()),
            Event::InitApply(pod) => {
                if let (Some(set), Some(uid)) = (listed.as_mut(), pod.metadata.uid.as_ref()) {
                    set.insert(uid.clone());
                }
                apply(pod, &mut slots);
            }
            Event::InitDone => {
                // Pods that vanished while the watch was down.
                if let Some(seen) = listed.take() {
                    slots.retain(|uid, slot| {
                        let keep = seen.contains(uid);
                        if !keep {
                            slot.tx.send_replace(None);
                        }
                        keep
                    });
                }
            }
            Event::Apply(pod) => apply(pod, &mut slots),
            Event::Delete(pod) => {
                if let Some(slot) = pod.metadata.uid.as_ref().and_then(|uid| slots.remove(uid)) {
                    slot.tx.send_replace(None);
                }
            }
        }
    }

    workers_cancel.cancel();
    drop(slots);
    let stop = async { while workers.join_next().await.is_some() {} };
    if tokio::time::timeout(WORKER_STOP_TIMEOUT, stop).await.is_err() {
        tracing::warn!(node = %node, "pod workers did not stop in time; aborting them");
        workers.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu_pool() -> PoolSpec {
        "gpu:min=0,max=2,cpu=16,memory=64Gi,gpus=1".parse().unwrap()
    }

    #[test]
    fn node_object_for_gpu_pool() {
        let node = node_object("gpu-1", &gpu_pool());
        let v = serde_json::to_value(&node).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Node");
        assert_eq!(v["metadata"]["name"], "gpu-1");
        let labels = &v["metadata"]["labels"];
        assert_eq!(labels["proofjobs.io/pool"], "gpu");
        assert_eq!(labels["kubernetes.io/hostname"], "gpu-1");
        assert_eq!(labels["node.kubernetes.io/instance-type"], "fake-gpu");
        assert_eq!(labels["nvidia.com/gpu.present"], "true");
        assert_eq!(v["spec"]["taints"][0], json!({"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}));
        assert!(v.get("status").is_none());

        let cpu: PoolSpec = "cpu:min=1,max=2,cpu=16,memory=64Gi".parse().unwrap();
        let v = serde_json::to_value(node_object("cpu-1", &cpu)).unwrap();
        assert!(v["spec"].get("taints").is_none());
        assert!(v["metadata"]["labels"].get("nvidia.com/gpu.present").is_none());
    }

    #[test]
    fn node_status_shape() {
        let now: Timestamp = "2025-01-01T00:00:10Z".parse().unwrap();
        let since: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let s = serde_json::to_value(node_status("gpu-1", &gpu_pool(), 10250, now, since)).unwrap();
        assert_eq!(s["capacity"]["cpu"], "16");
        assert_eq!(s["capacity"]["memory"], "64Gi");
        assert_eq!(s["capacity"]["pods"], "110");
        assert_eq!(s["capacity"]["nvidia.com/gpu"], "1");
        assert_eq!(s["allocatable"], s["capacity"]);
        let ready = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastHeartbeatTime"], "2025-01-01T00:00:10Z");
        assert_eq!(ready["lastTransitionTime"], "2025-01-01T00:00:00Z");
        assert_eq!(s["addresses"][0], json!({"type": "InternalIP", "address": "127.0.0.1"}));
        assert_eq!(s["addresses"][1]["type"], "Hostname");
        assert_eq!(s["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(s["nodeInfo"]["operatingSystem"], "linux");
        assert!(s["nodeInfo"]["kubeletVersion"].as_str().unwrap().starts_with("v1.34"));
    }

    #[tokio::test]
    async fn register_writes_node_status_and_lease() {
        use crate::images::ImageMap;
        use crate::logs::LogRegistry;
        use http_body_util::BodyExt;
        use hyper::{Request, Response};
        use kube::client::Body;

        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = AgentContext {
            client: kube::Client::new(service, "default"),
            images: ImageMap::default(),
            base_env: Vec::new(),
            work_dir: "/tmp".into(),
            logs: LogRegistry::new("/tmp".into()),
            log_port: 4443,
            max_grace: Duration::from_secs(30),
            lease_interval: Duration::from_secs(10),
            ready_interval: Duration::from_secs(30),
        };
        let pool = gpu_pool();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for reply in [
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1", "uid": "node-uid"}}),
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1", "uid": "node-uid"}}),
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "gpu-1", "namespace": "kube-node-lease"}}),
            ] {
                let (req, send) = handle.next_request().await.unwrap();
                let ct = req.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                let line = format!("{} {} {}", req.method(), req.uri(), ct);
                let body: serde_json::Value = serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
                seen.push((line, body));
                send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap());
            }
            seen
        });
        let uid = register(&ctx, "gpu-1", &pool).await.unwrap();
        assert_eq!(uid, "node-uid");
        let seen = server.await.unwrap();
        assert!(seen[0].0.starts_with("PATCH /api/v1/nodes/gpu-1?"), "{}", seen[0].0);
        assert!(seen[0].0.contains("fieldManager=proofjobs-node-agent"), "{}", seen[0].0);
        assert!(seen[0].0.ends_with("application/apply-patch+yaml"), "{}", seen[0].0);
        assert_eq!(seen[0].1["spec"]["taints"][0]["key"], "nvidia.com/gpu");
        assert!(seen[1].0.starts_with("PATCH /api/v1/nodes/gpu-1/status"), "{}", seen[1].0);
        assert!(seen[1].0.ends_with("application/merge-patch+json"), "{}", seen[1].0);
        assert_eq!(seen[1].1["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 4443);
        assert_eq!(seen[1].1["status"]["capacity"]["nvidia.com/gpu"], "1");
        assert!(seen[2].0.starts_with("PATCH /apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/gpu-1?"), "{}", seen[2].0);
        assert_eq!(seen[2].1["metadata"]["ownerReferences"][0]["uid"], "node-uid");
    }

    #[test]
    fn lease_shape() {
        let now: Timestamp = "2025-01-01T00:00:10.5Z".parse().unwrap();
        let v = serde_json::to_value(lease_object("cpu-1", "uid-1", now)).unwrap();
        assert_eq!(v["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(v["kind"], "Lease");
        assert_eq!(v["metadata"]["namespace"], "kube-node-lease");
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(v["spec"]["holderIdentity"], "cpu-1");
        assert_eq!(v["spec"]["leaseDurationSeconds"], 40);
        assert_eq!(v["spec"]["renewTime"], "2025-01-01T00:00:10.500000Z");
    }
}
