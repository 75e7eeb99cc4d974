//! The set of fake nodes this process runs, grouped by pool.
//!
//! Adding a node registers its Node object and starts its agent task; removing one cordons it,
//! checks that nothing runs there, stops the agent and deletes the Node. Every change is logged
//! to the events file. The autoscaler and shutdown both go through here, so the node count per
//! pool has one owner.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::AgentContext;
use crate::events::{EventLog, NODE_DOWN, NODE_UP};
use crate::node::{self, LEASE_NAMESPACE};
use crate::pool::PoolSpec;
use crate::status;

const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Time between cordoning an idle node and re-checking it, for binds already in flight.
const CORDON_SETTLE: Duration = Duration::from_millis(500);

struct NodeEntry {
    pool: String,
    cancel: CancellationToken,
    /// None while the node is still registering.
    task: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, NodeEntry>,
    next_index: HashMap<String, usize>,
}

pub struct Fleet {
    ctx: Arc<AgentContext>,
    pools: Vec<PoolSpec>,
    events: EventLog,
    state: Mutex<State>,
}

impl Fleet {
    pub fn new(ctx: Arc<AgentContext>, pools: Vec<PoolSpec>, events: EventLog) -> Self {
        Self { ctx, pools, events, state: Mutex::default() }
    }

    pub fn pools(&self) -> &[PoolSpec] {
        &self.pools
    }

    fn pool(&self, name: &str) -> Option<&PoolSpec> {
        self.pools.iter().find(|p| p.name == name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Nodes (registered or registering) of `pool`.
    pub fn count(&self, pool: &str) -> usize {
        self.lock().nodes.values().filter(|n| n.pool == pool).count()
    }

    /// (node, pool) for every running node.
    pub fn nodes(&self) -> Vec<(String, String)> {
        self.lock().nodes.iter().filter(|(_, n)| n.task.is_some()).map(|(name, n)| (name.clone(), n.pool.clone())).collect()
    }

    /// Brings every pool up to its `min`.
    pub async fn start(&self) -> Result<()> {
        for pool in &self.pools {
            while self.count(&pool.name) < pool.min {
                self.add_node(&pool.name).await?;
            }
        }
        Ok(())
    }

    /// Registers one more node in `pool` (refused at the pool's max). Returns its name.
    pub async fn add_node(&self, pool_name: &str) -> Result<String> {
        let pool = self.pool(pool_name).with_context(|| format!("no pool {pool_name}"))?.clone();
        let (name, cancel) = {
            let mut st = self.lock();
            let count = st.nodes.values().filter(|n| n.pool == pool.name).count();
            if count >= pool.max {
                bail!("pool {} is at its max of {} nodes", pool.name, pool.max);
            }
            let next = st.next_index.entry(pool.name.clone()).or_insert(1);
            let name = pool.node_name(*next);
            *next += 1;
            let cancel = CancellationToken::new();
            st.nodes.insert(name.clone(), NodeEntry { pool: pool.name.clone(), cancel: cancel.clone(), task: None });
            (name, cancel)
        };
        let uid = match node::register(&self.ctx, &name, &pool).await {
            Ok(uid) => uid,
            Err(err) => {
                self.lock().nodes.remove(&name);
                return Err(err);
            }
        };
        let tracked = match self.lock().nodes.get_mut(&name) {
            Some(entry) => {
                entry.task = Some(tokio::spawn(node::run(self.ctx.clone(), name.clone(), uid, pool.clone(), cancel)));
                true
            }
            None => false,
        };
        if !tracked {
            // Shut down while registering: undo.
            let nodes: Api<Node> = Api::all(self.ctx.client.clone());
            let _ = nodes.delete(&name, &DeleteParams::default()).await;
            bail!("fleet stopped while {name} was registering");
        }
        self.events.record(NODE_UP, &name, &pool.name);
        tracing::info!(node = %name, pool = %pool.name, "node up");
        Ok(name)
    }

    /// Removes an idle node: cordon, confirm no non-terminal pod is bound to it, stop its agent,
    /// delete the Node. Returns false (and uncordons) when a pod turned up meanwhile.
    pub async fn remove_idle_node(&self, name: &str) -> Result<bool> {
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}})))
            .await
            .with_context(|| format!("cordon {name}"))?;
        tokio::time::sleep(CORDON_SETTLE).await;
        let pods: Api<Pod> = Api::all(self.ctx.client.clone());
        let bound = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
            .await
            .with_context(|| format!("list pods on {name}"))?;
        if bound.items.iter().any(|p| !status::is_terminal(p)) {
            nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": null}})))
                .await
                .with_context(|| format!("uncordon {name}"))?;
            return Ok(false);
        }
        self.stop_node(name).await;
        Ok(true)
    }

    /// Stops a node's agent and deletes its Node and Lease.
    async fn stop_node(&self, name: &str) {
        let Some(entry) = self.lock().nodes.remove(name) else {
            return;
        };
        entry.cancel.cancel();
        if let Some(task) = entry.task {
            if tokio::time::timeout(NODE_STOP_TIMEOUT, task).await.is_err() {
                tracing::warn!(node = %name, "node agent did not stop in time");
            }
        }
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        match nodes.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => tracing::warn!(node = %name, %err, "deleting the Node failed"),
        }
        let leases: Api<Lease> = Api::namespaced(self.ctx.client.clone(), LEASE_NAMESPACE);
        match leases.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => tracing::debug!(node = %name, %err, "deleting the Lease failed"),
        }
        self.events.record(NODE_DOWN, name, &entry.pool);
        tracing::info!(node = %name, pool = %entry.pool, "node down");
    }

    /// Forgets nodes whose agent stopped by itself (their Node was deleted from the API: a lost
    /// machine), recording them as down.
    pub fn forget_lost_nodes(&self) {
        let lost: Vec<(String, String)> = {
            let mut st = self.lock();
            let names: Vec<String> =
                st.nodes.iter().filter(|(_, n)| n.task.as_ref().is_some_and(|t| t.is_finished())).map(|(name, _)| name.clone()).collect();
            names.into_iter().filter_map(|name| st.nodes.remove(&name).map(|n| (name, n.pool))).collect()
        };
        for (name, pool) in lost {
            self.events.record(NODE_DOWN, &name, &pool);
            tracing::info!(node = %name, pool = %pool, "node lost");
        }
    }

    /// Kills every pod process and deletes every Node this fleet created.
    pub async fn shutdown(&self) {
        let names: Vec<String> = self.lock().nodes.keys().cloned().collect();
        // Cancel all first so processes on every node stop in parallel.
        for name in &names {
            if let Some(e) = self.lock().nodes.get(name) {
                e.cancel.cancel();
            }
        }
        let stops = names.iter().map(|n| self.stop_node(n));
        futures::future::join_all(stops).await;
    }
}
