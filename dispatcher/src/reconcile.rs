//! The reconcile loop. Level-triggered: every pass reads the durable state and the backend's view,
//! asks the planner (`plan.rs`) what to do, and does it — so a missed wake-up or a restart costs a
//! pass, nothing more. Actions run proof by proof: an error in one proof's actions is logged and
//! the pass goes on with the others.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Result;
use chrono::Utc;
use proofjobs_pipeline::{
    stage::{stage_list, Stage},
    state::{wait_for, Db, Notifications, ProofStatus, RunnerRow},
};
use tokio::sync::watch;

use crate::{
    backend::{Backend, GroupLoad, RunnerSpec},
    plan::{plan, Action, ActiveProof, Policy, RunnerView, Snapshot},
};

/// How long a launch that failed (apiserver unreachable, binary missing) holds its group back.
const LAUNCH_RETRY: Duration = Duration::from_secs(5);
/// A pass runs at least this often even when nothing wakes the loop (heartbeats, deadlines).
const IDLE_PASS: Duration = Duration::from_secs(1);

pub struct Dispatcher<B: Backend> {
    db: Db,
    backend: Arc<B>,
    policy: Policy,
}

impl<B: Backend> Dispatcher<B> {
    pub fn new(db: Db, backend: Arc<B>, policy: Policy) -> Self {
        Dispatcher { db, backend, policy }
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Reconcile until `stop` turns true.
    pub async fn run(self, notifications: Notifications, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut wake = notifications.subscribe();
        let changed = self.backend.changed().unwrap_or_default();
        tracing::info!(backend = self.backend.name(), "dispatcher running");
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            if let Err(e) = self.reconcile().await {
                tracing::warn!("reconcile pass failed: {e:#}");
            }
            tokio::select! {
                _ = wait_for(&mut wake, None, IDLE_PASS) => {}
                _ = changed.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// One pass: gather, plan, act.
    pub async fn reconcile(&self) -> Result<()> {
        let snapshot = self.snapshot().await?;
        let actions = plan(&snapshot, &self.policy);
        let mut by_proof: Vec<(String, Vec<Action>)> = Vec::new();
        for action in actions {
            match by_proof.iter_mut().find(|(p, _)| p == action.proof_id()) {
                Some((_, list)) => list.push(action),
                None => by_proof.push((action.proof_id().to_string(), vec![action])),
            }
        }
        for (proof_id, actions) in by_proof {
            for action in actions {
                if let Err(e) = self.execute(&action).await {
                    tracing::warn!(proof = %proof_id, "{e:#}; the proof's remaining actions wait for the next pass");
                    break;
                }
            }
        }
        Ok(())
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let backend_name = self.backend.name();
        let live = self.db.unreaped_runners(backend_name).await?;
        // Progress first, so a runner that ends below has its final counts shown.
        let waiting = self.observe(&live).await?;
        let ended: HashMap<String, Option<i32>> = self.backend.reap(&live).await?.into_iter().map(|e| (e.runner_id, e.exit_code)).collect();
        let proofs = self.db.active_proofs().await?;
        let mut pending: HashMap<String, Vec<Stage>> = HashMap::new();
        for (proof_id, stage) in self.db.pending_stages().await? {
            pending.entry(proof_id).or_default().push(stage);
        }
        let active: Vec<ActiveProof> = proofs
            .into_iter()
            .map(|p| ActiveProof {
                pending_stages: pending.remove(&p.id).unwrap_or_default(),
                id: p.id,
                status: p.status,
                deadline: p.deadline,
            })
            .collect();
        let mut gone: Vec<String> = live.iter().map(|r| r.proof_id.clone()).filter(|id| !active.iter().any(|p| p.id == *id)).collect();
        gone.sort();
        gone.dedup();
        let finished_at = self.db.finish_times(&gone).await?.into_iter().collect();
        let mut ids: Vec<String> = active.iter().map(|p| p.id.clone()).collect();
        ids.extend(live.iter().map(|r| r.proof_id.clone()));
        ids.sort();
        ids.dedup();
        let groups = self.db.group_states(&ids, backend_name).await?;
        let runners = live
            .into_iter()
            .map(|row| RunnerView { ended: ended.get(&row.id).copied(), waiting_for_capacity: waiting.get(&row.id).copied(), row })
            .collect();
        Ok(Snapshot { now: Utc::now(), active, runners, finished_at, groups, heartbeats: self.backend.heartbeats() })
    }

    /// Tell the backend each live runner group's load (progress shown to operators, parallelism);
    /// collect how long groups have waited for capacity. A failure here is one runner's, not the pass's.
    async fn observe(&self, live: &[RunnerRow]) -> Result<HashMap<String, Duration>> {
        let mut ids: Vec<String> = live.iter().map(|r| r.proof_id.clone()).collect();
        ids.dedup();
        let progress = self.db.stage_progress_of(&ids).await?;
        let mut waiting = HashMap::new();
        for runner in live {
            let mut load = GroupLoad::default();
            for stage in &runner.stages {
                if let Some(p) = progress.get(&runner.proof_id).and_then(|m| m.get(stage)) {
                    load.done += p.done;
                    load.total += p.total;
                    load.open += p.pending + p.running;
                }
                load.concurrency = load.concurrency.max(stage.runner_concurrency());
            }
            match self.backend.observe(runner, &load).await {
                Ok(Some(waited)) => {
                    tracing::debug!(runner = %runner.id, secs = waited.as_secs(), "waiting for capacity");
                    waiting.insert(runner.id.clone(), waited);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(runner = %runner.id, "observing runner: {e:#}"),
            }
        }
        Ok(waiting)
    }

    async fn execute(&self, action: &Action) -> Result<()> {
        let backend_name = self.backend.name();
        match action {
            Action::CloseRunner { runner_id, exit_code, error, .. } => {
                self.db.runner_reaped(runner_id, *exit_code, error.as_deref()).await?;
            }
            Action::StopRunner { runner, .. } => {
                tracing::info!(runner = %runner.id, proof = %runner.proof_id, "stopping runner");
                self.backend.stop(runner).await?;
            }
            Action::FailProof { proof_id, cause } => {
                if self.db.finish_proof(proof_id, ProofStatus::Failed, Some(cause), None, None).await? {
                    tracing::warn!(proof = %proof_id, "proof failed: {cause}");
                }
            }
            Action::HoldBack { proof_id, stages, counted, until } => {
                let state = self.db.record_group_retry(proof_id, stages, *counted, *until).await?;
                tracing::warn!(
                    proof = %proof_id,
                    stages = %stage_list(stages),
                    failures = state.failures,
                    hand_backs = state.retries,
                    until = %until.to_rfc3339(),
                    "runner group ended without finishing; next runner held back"
                );
            }
            Action::MarkRunning { proof_id } => self.db.mark_proof_running(proof_id).await?,
            Action::Tell { runner, note, .. } => self.backend.tell(runner, note).await,
            Action::Launch { proof_id, stages, attempt, deadline_secs } => {
                let spec = RunnerSpec {
                    runner_id: self.backend.runner_id(proof_id, stages, *attempt),
                    proof_id: proof_id.clone(),
                    stages: stages.clone(),
                    deadline_secs: *deadline_secs,
                };
                // The row goes first: a crash between the two leaves a runner row the backend
                // reports gone on the next pass, never an untracked runner.
                self.db.register_runner(&spec.runner_id, &spec.proof_id, &spec.stages, backend_name, "").await?;
                match self.backend.launch(&spec).await {
                    Ok(handle) => self.db.set_runner_handle(&spec.runner_id, &handle).await?,
                    Err(e) => {
                        tracing::error!(proof = %proof_id, stages = %stage_list(stages), "launching runner: {e:#}");
                        self.db.runner_reaped(&spec.runner_id, None, Some(&format!("launch failed: {e:#}"))).await?;
                        self.db.hold_group(proof_id, stages, Utc::now() + LAUNCH_RETRY).await?;
                    }
                }
            }
        }
        Ok(())
    }
}
