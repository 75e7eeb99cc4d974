//! The reconcile loop. Level-triggered: every pass reads the durable state and makes the world
//! match it — runners for stages with waiting tasks, none for finished proofs, deadlines enforced,
//! ended runners accounted for — so a missed wake-up or a restart costs a pass, nothing more.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use chrono::Utc;
use proofjobs_pipeline::{
    exit::{classify, ExitClass},

    stage::{stage_list, Stage},
    state::{wait_for, Db, Notifications, ProofStatus},
};
use tokio::sync::watch;

use crate::backend::{Backend, GroupLoad, Placement, RunnerSpec};

/// Runner failures (crashes, kills) a proof survives before it fails.
pub const MAX_RUNNER_FAILURES: i32 = 3;

/// How long runners of a finished proof get to exit by themselves (they check every 0.5 s).
const FINISHED_RUNNER_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

pub struct Dispatcher<B: Backend> {
    db: Db,
    backend: Arc<B>,
    placement: Placement,
    /// How long a runner group's pods may wait for capacity (e.g. a GPU node group scaling from
    /// zero) before the proof fails with that cause.
    capacity_wait_limit: Duration,
    /// When a runner group of a proof may be started again (backoff after failures).
    not_before: HashMap<(String, Vec<Stage>), Instant>,
}

impl<B: Backend> Dispatcher<B> {
    pub fn new(db: Db, backend: Arc<B>, placement: Placement) -> Self {
        Dispatcher { db, backend, placement, capacity_wait_limit: Duration::from_secs(900), not_before: HashMap::new() }
    }

    pub fn with_capacity_wait_limit(mut self, limit: Duration) -> Self {
        self.capacity_wait_limit = limit;
        self
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Reconcile until `stop` turns true.
    pub async fn run(mut self, notifications: Notifications, mut stop: watch::Receiver<bool>) -> Result<()> {
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
                _ = wait_for(&mut wake, None, Duration::from_millis(1000)) => {}
                _ = changed.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    pub async fn reconcile(&mut self) -> Result<()> {
        let backend_name = self.backend.name();
        let live = self.db.live_runners(backend_name).await?;
        // Progress first: a runner reaped below gets its final counts shown.
        self.observe_runners(&live).await?;
        for ended in self.backend.reap(&live).await? {
            self.account_for(&ended.runner_id, ended.exit_code, &live).await?;
        }
        let live = self.db.live_runners(backend_name).await?;
        let active = self.db.active_proofs().await?;

        // Runners of a finished proof (completed, failed, cancelled) see it and exit by
        // themselves within a second, so their Jobs stay for operators to read (complete, or
        // failed by the rule that matched); only a runner that lingers past the grace is stopped.
        for runner in &live {
            if active.iter().any(|p| p.id == runner.proof_id) {
                continue;
            }
            let proof = self.db.get_proof(&runner.proof_id).await?;
            let lingering = proof.as_ref().is_none_or(|p| p.finished_at.is_none_or(|t| Utc::now() - t > FINISHED_RUNNER_GRACE));
            if lingering {
                tracing::info!(runner = %runner.id, proof = %runner.proof_id, "stopping runner of a finished proof");
                self.backend.stop(runner).await?;
            }
        }

        let now = Utc::now();
        for proof in &active {
            if proof.deadline <= now {
                let cause = format!("deadline exceeded: the proof was due at {}", proof.deadline.to_rfc3339());
                if self.db.finish_proof(&proof.id, ProofStatus::Failed, Some(&cause), None, None).await? {
                    tracing::warn!(proof = %proof.id, "{cause}");
                }
                continue;
            }
            let pending = self.db.stages_with_pending_tasks(&proof.id).await?;
            if pending.is_empty() {
                continue;
            }
            self.db.mark_proof_running(&proof.id).await?;
            let mut groups: Vec<Vec<Stage>> = pending.iter().map(|s| self.placement.group_of(*s).to_vec()).collect();
            groups.sort();
            groups.dedup();
            for group in groups {
                let served = live.iter().any(|r| r.proof_id == proof.id && r.stages == group);
                let key = (proof.id.clone(), group.clone());
                if served || self.not_before.get(&key).is_some_and(|t| Instant::now() < *t) {
                    continue;
                }
                let attempt = self.db.runner_attempts(&proof.id, &group, backend_name).await?;
                let spec = RunnerSpec {
                    runner_id: self.backend.runner_id(&proof.id, &group, attempt),
                    proof_id: proof.id.clone(),
                    stages: group.clone(),
                    deadline_secs: (proof.deadline - now).num_seconds().max(1),
                };
                // The row goes first: a crash between the two leaves a runner row whose pid check
                // fails on the next pass, never an untracked process.
                self.db.register_runner(&spec.runner_id, &spec.proof_id, &spec.stages, backend_name, "").await?;
                match self.backend.launch(&spec).await {
                    Ok(handle) => self.db.set_runner_handle(&spec.runner_id, &handle).await?,
                    Err(e) => {
                        tracing::error!(proof = %proof.id, stages = %stage_list(&group), "launching runner: {e:#}");
                        self.db.runner_exited(&spec.runner_id, None, Some(&format!("launch failed: {e:#}"))).await?;
                        self.not_before.insert(key, Instant::now() + Duration::from_secs(5));
                    }
                }
            }
        }
        Ok(())
    }

    /// Tell the backend each live runner group's load; fail the proof when a group has waited
    /// for capacity past the limit.
    async fn observe_runners(&mut self, live: &[proofjobs_pipeline::state::RunnerRow]) -> Result<()> {
        let mut proofs: Vec<&str> = live.iter().map(|r| r.proof_id.as_str()).collect();
        proofs.sort();
        proofs.dedup();
        for proof_id in proofs {
            self.observe_proof_runners(proof_id, live).await?;
        }
        Ok(())
    }

    async fn observe_proof_runners(&mut self, proof_id: &str, live: &[proofjobs_pipeline::state::RunnerRow]) -> Result<()> {
        let mine: Vec<_> = live.iter().filter(|r| r.proof_id == proof_id).collect();
        let progress = self.db.stage_progress(proof_id).await?;
        for runner in mine {
            let mut load = GroupLoad::default();
            for stage in &runner.stages {
                if let Some(p) = progress.get(stage) {
                    load.done += p.done;
                    load.total += p.total;
                    load.open += p.pending + p.running;
                }
                load.concurrency = load.concurrency.max(stage.runner_concurrency());
            }
            match self.backend.observe(runner, &load).await {
                Ok(Some(waited)) if waited > self.capacity_wait_limit => {
                    let cause = format!(
                        "waiting for capacity: no node could run stage {} for {} s (limit {} s); check the node group's scaling and the stage profile",
                        stage_list(&runner.stages),
                        waited.as_secs(),
                        self.capacity_wait_limit.as_secs()
                    );
                    if self.db.finish_proof(proof_id, ProofStatus::Failed, Some(&cause), None, None).await? {
                        tracing::warn!(proof = %proof_id, "{cause}");
                    }
                }
                Ok(Some(waited)) => tracing::debug!(runner = %runner.id, secs = waited.as_secs(), "waiting for capacity"),
                Ok(None) => {}
                Err(e) => tracing::warn!(runner = %runner.id, "observing runner: {e:#}"),
            }
        }
        Ok(())
    }

    /// A runner ended: record it, give its tasks back, and decide what its exit means for the proof.
    async fn account_for(&mut self, runner_id: &str, observed: Option<i32>, live: &[proofjobs_pipeline::state::RunnerRow]) -> Result<()> {
        let Some(runner) = live.iter().find(|r| r.id == runner_id) else { return Ok(()) };
        let recorded_error = self.db.runner_error(runner_id).await?;
        self.db.runner_exited(runner_id, observed, None).await?;
        let Some(proof) = self.db.get_proof(&runner.proof_id).await? else { return Ok(()) };
        if proof.status.is_terminal() {
            return Ok(());
        }
        let key = (proof.id.clone(), runner.stages.clone());
        match classify(observed) {
            ExitClass::Done => {}
            ExitClass::FailProof => {
                let cause = recorded_error.unwrap_or_else(|| {
                    format!("runner {runner_id} exited with code {} (bad input or configuration)", observed.unwrap_or(-1))
                });
                self.db.finish_proof(&proof.id, ProofStatus::Failed, Some(&cause), None, None).await?;
            }
            ExitClass::RetryNotCounted => {
                self.not_before.insert(key, Instant::now() + Duration::from_secs(1));
            }
            ExitClass::RetryCounted => {
                let failures = self.db.record_runner_failure(&proof.id).await?;
                tracing::warn!(proof = %proof.id, runner = runner_id, code = ?observed, failures, "runner failed");
                if failures >= MAX_RUNNER_FAILURES {
                    let cause = format!(
                        "runners failed {failures} times; the last ({runner_id}, stages {}) exited with {}",
                        stage_list(&runner.stages),
                        observed.map(|c| format!("code {c}")).unwrap_or_else(|| "a signal".into())
                    );
                    self.db.finish_proof(&proof.id, ProofStatus::Failed, Some(&cause), None, None).await?;
                } else {
                    let backoff = Duration::from_secs(1 << failures.clamp(0, 5));
                    self.not_before.insert(key, Instant::now() + backoff);
                }
            }
        }
        Ok(())
    }
}
