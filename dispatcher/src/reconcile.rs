//! The reconcile loop. Level-triggered: every pass reads the durable state and the backend's view,
//! asks the planner (`plan.rs`) what to do, and does it — so a missed wake-up or a restart costs a
//! pass, nothing more. Actions run proof by proof, several proofs at once: an error in one proof's
//! actions is logged and the pass goes on with the others. New runners start before the sweep
//! that keeps live runner groups' views current, and the sweep only visits groups whose proof or
//! backend objects changed (or that it has not seen for a while), so a pass costs little when
//! thousands of proofs are in flight and nothing changes.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use chrono::Utc;
use futures::StreamExt;
use proofjobs_pipeline::{
    stage::{stage_list, Stage},
    state::{Db, Notifications, ProofStatus, RunnerRow},
};
use tokio::sync::{broadcast, watch};

use crate::{
    backend::{Backend, GroupLoad, RunnerSpec},
    plan::{plan, Action, ActiveProof, Policy, RunnerView, Snapshot},
};

/// How long a launch that failed (apiserver unreachable, binary missing) holds its group back.
const LAUNCH_RETRY: Duration = Duration::from_secs(5);
/// A pass runs at least this often even when nothing wakes the loop: what no notification or
/// watch event announces (silent heartbeats, deadlines, a process that died without a word) is
/// noticed within this. Kept at seconds so that 10,000 proofs in flight cost little when idle.
const IDLE_PASS: Duration = Duration::from_secs(3);
/// A live runner group is observed at least this often even when nothing about it changed.
const OBSERVE_REFRESH: Duration = Duration::from_secs(30);
/// Proofs whose actions run at once, and runner groups observed at once.
const CONCURRENCY: usize = 16;

pub struct Dispatcher<B: Backend> {
    db: Db,
    backend: Arc<B>,
    policy: Policy,
    observed: Mutex<Observed>,
}

/// What the observe sweep last saw, per runner.
#[derive(Default)]
struct Observed {
    at: HashMap<String, Instant>,
    /// How long its pods had waited for capacity, when it was observed.
    waiting: HashMap<String, (Duration, Instant)>,
}

impl<B: Backend> Dispatcher<B> {
    pub fn new(db: Db, backend: Arc<B>, policy: Policy) -> Self {
        Dispatcher { db, backend, policy, observed: Mutex::default() }
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Reconcile until `stop` turns true.
    pub async fn run(self, notifications: Notifications, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut wake = notifications.subscribe();
        let changed = self.backend.changed().unwrap_or_default();
        tracing::info!(backend = self.backend.name(), "dispatcher running");
        // The first pass looks at everything; later ones at what changed.
        let mut changed_proofs: Option<HashSet<String>> = None;
        let mut live: Vec<RunnerRow> = Vec::new();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            match self.pass(changed_proofs.as_ref()).await {
                Ok(now_live) => live = now_live,
                Err(e) => tracing::warn!("reconcile pass failed: {e:#}"),
            }
            // Wait for a reason to pass again. Backend events that only change what a live runner
            // group shows (pods scheduled, unschedulable) are handled by an observe sweep alone.
            let idle = tokio::time::sleep(IDLE_PASS);
            tokio::pin!(idle);
            let mut woken_by: Option<HashSet<String>> = Some(HashSet::new());
            loop {
                tokio::select! {
                    received = wake.recv() => {
                        match received {
                            Ok(proof_id) => {
                                if let Some(proofs) = woken_by.as_mut() {
                                    proofs.insert(proof_id);
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => woken_by = None,
                            // No listener any more: passes on the timer only.
                            Err(broadcast::error::RecvError::Closed) => (&mut idle).await,
                        }
                        break;
                    }
                    _ = &mut idle => break,
                    _ = changed.notified() => {
                        if self.backend.take_ended() {
                            break;
                        }
                        if let Err(e) = self.observe(&live, Some(&HashSet::new())).await {
                            tracing::warn!("observe sweep failed: {e:#}");
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
            // Every proof named since: the one that woke us and those queued behind it.
            changed_proofs = match (woken_by, drain(&mut wake)) {
                (Some(mut woken), Some(queued)) => {
                    woken.extend(queued);
                    Some(woken)
                }
                _ => None,
            };
        }
    }

    /// One pass over everything: gather, plan, act, observe.
    pub async fn reconcile(&self) -> Result<()> {
        self.pass(None).await.map(drop)
    }

    /// One pass; `changed_proofs` names the proofs notified since the last one (`None`: all).
    /// Returns the runners still live after it.
    async fn pass(&self, changed_proofs: Option<&HashSet<String>>) -> Result<Vec<RunnerRow>> {
        let (snapshot, live) = self.snapshot().await?;
        let actions = plan(&snapshot, &self.policy);
        let mut by_proof: HashMap<String, Vec<Action>> = HashMap::new();
        for action in actions {
            by_proof.entry(action.proof_id().to_string()).or_default().push(action);
        }
        let touched: HashSet<String> = by_proof.keys().cloned().collect();
        let _: Vec<()> = futures::stream::iter(by_proof)
            .map(|(proof_id, actions)| self.act(proof_id, actions))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let ended: HashSet<&str> = snapshot.runners.iter().filter(|r| r.end().is_some()).map(|r| r.row.id.as_str()).collect();
        let live: Vec<RunnerRow> = live.iter().filter(|r| !ended.contains(r.id.as_str())).cloned().collect();
        let changed = changed_proofs.map(|c| c.union(&touched).cloned().collect::<HashSet<String>>());
        self.observe(&live, changed.as_ref()).await?;
        Ok(live)
    }

    /// The snapshot the planner reads, and the runner rows it came from.
    async fn snapshot(&self) -> Result<(Snapshot, Vec<RunnerRow>)> {
        let backend_name = self.backend.name();
        let live = self.db.unreaped_runners(backend_name).await?;
        let waiting = self.waiting();
        let ended: HashMap<String, Option<i32>> = self.backend.reap(&live).await?.into_iter().map(|e| (e.runner_id, e.exit_code)).collect();
        let mut pending: HashMap<String, Vec<Stage>> = HashMap::new();
        for (proof_id, stage) in self.db.pending_stages().await? {
            pending.entry(proof_id).or_default().push(stage);
        }
        let active: Vec<ActiveProof> = self
            .db
            .active_proof_heads()
            .await?
            .into_iter()
            .map(|head| ActiveProof {
                pending_stages: pending.remove(&head.id).unwrap_or_default(),
                id: head.id,
                status: head.status,
                deadline: head.deadline,
                owner: head.owner,
                waiting: head.waiting,
            })
            .collect();
        let quotas = self.db.quotas().await?;
        let active_ids: HashSet<&str> = active.iter().map(|p| p.id.as_str()).collect();
        let mut gone: Vec<String> = live.iter().filter(|r| !active_ids.contains(r.proof_id.as_str())).map(|r| r.proof_id.clone()).collect();
        gone.sort();
        gone.dedup();
        let finished_at = self.db.finish_times(&gone).await?.into_iter().collect();
        let mut ids: Vec<String> = active.iter().map(|p| p.id.clone()).collect();
        ids.extend(live.iter().map(|r| r.proof_id.clone()));
        ids.sort();
        ids.dedup();
        let groups = self.db.group_states(&ids, backend_name).await?;
        let runners = live
            .iter()
            .map(|row| RunnerView {
                ended: ended.get(&row.id).copied(),
                waiting_for_capacity: waiting.get(&row.id).copied(),
                row: row.clone(),
            })
            .collect();
        let heartbeats = self.backend.heartbeats();
        Ok((Snapshot { now: Utc::now(), active, runners, finished_at, groups, heartbeats, quotas }, live))
    }

    /// How long each runner group has waited for capacity, as of now, from the last sweep.
    fn waiting(&self) -> HashMap<String, Duration> {
        let observed = self.observed.lock().unwrap();
        observed.waiting.iter().map(|(id, (waited, at))| (id.clone(), *waited + at.elapsed())).collect()
    }

    /// Tell the backend the load of live runner groups (progress shown to operators,
    /// parallelism) and note how long they have waited for capacity. Visits the groups of
    /// `changed` proofs, all of them when the backend's world changed (or `changed` is `None`),
    /// and any not seen for `OBSERVE_REFRESH`. A failure here is one runner's, not the pass's.
    async fn observe(&self, live: &[RunnerRow], changed: Option<&HashSet<String>>) -> Result<()> {
        let backend_changed = self.backend.take_changed();
        let everything = backend_changed.is_none() || changed.is_none();
        let due: Vec<&RunnerRow> = {
            let mut observed = self.observed.lock().unwrap();
            let ids: HashSet<&str> = live.iter().map(|r| r.id.as_str()).collect();
            observed.at.retain(|id, _| ids.contains(id.as_str()));
            observed.waiting.retain(|id, _| ids.contains(id.as_str()));
            live.iter()
                .filter(|r| {
                    everything
                        || changed.is_some_and(|c| c.contains(&r.proof_id))
                        || backend_changed.as_ref().is_some_and(|b| b.contains(&r.handle) || b.contains(&r.id))
                        || observed.at.get(&r.id).is_none_or(|t| t.elapsed() > OBSERVE_REFRESH)
                })
                .collect()
        };
        tracing::debug!(live = live.len(), due = due.len(), everything, "observe sweep");
        if due.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<String> = due.iter().map(|r| r.proof_id.clone()).collect();
        ids.sort();
        ids.dedup();
        let progress = self.db.stage_progress_of(&ids).await?;
        // Owned rows: a stream of borrowed ones trips rustc's higher-ranked Send check when the loop is spawned.
        let loads: Vec<(RunnerRow, GroupLoad)> = due
            .into_iter()
            .map(|runner| {
                let mut load = GroupLoad::default();
                for stage in &runner.stages {
                    if let Some(p) = progress.get(&runner.proof_id).and_then(|m| m.get(stage)) {
                        load.done += p.done;
                        load.total += p.total;
                        load.open += p.pending + p.running;
                    }
                    load.concurrency = load.concurrency.max(stage.runner_concurrency());
                }
                (runner.clone(), load)
            })
            .collect();
        let results: Vec<(String, Result<Option<Duration>>)> =
            futures::stream::iter(loads).map(|(runner, load)| self.observe_one(runner, load)).buffer_unordered(CONCURRENCY).collect().await;
        let now = Instant::now();
        let mut observed = self.observed.lock().unwrap();
        for (runner_id, result) in results {
            match result {
                Ok(waited) => {
                    observed.at.insert(runner_id.clone(), now);
                    match waited {
                        Some(waited) => observed.waiting.insert(runner_id, (waited, now)),
                        None => observed.waiting.remove(&runner_id),
                    };
                }
                Err(e) => tracing::warn!(runner = %runner_id, "observing runner: {e:#}"),
            }
        }
        Ok(())
    }

    /// One proof's actions, in order; the first error leaves the rest for the next pass.
    async fn act(&self, proof_id: String, actions: Vec<Action>) {
        for action in actions {
            if let Err(e) = self.execute(&action).await {
                tracing::warn!(proof = %proof_id, "{e:#}; the proof's remaining actions wait for the next pass");
                return;
            }
        }
    }

    async fn observe_one(&self, runner: RunnerRow, load: GroupLoad) -> (String, Result<Option<Duration>>) {
        let result = self.backend.observe(&runner, &load).await;
        (runner.id, result)
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
            Action::Wait { proof_id, reason } => {
                tracing::info!(proof = %proof_id, reason = reason.as_deref().unwrap_or("-"), "proof waits to start");
                self.db.set_proof_waiting(proof_id, reason.as_deref()).await?;
            }
            Action::Tell { runner, note, .. } => self.backend.tell(runner, note).await,
            Action::Launch { proof_id, stages, attempt, deadline_secs, share } => {
                let spec = RunnerSpec {
                    runner_id: self.backend.runner_id(proof_id, stages, *attempt),
                    proof_id: proof_id.clone(),
                    stages: stages.clone(),
                    deadline_secs: *deadline_secs,
                    share: share.clone(),
                    runner_token: Some(self.db.issue_runner_token(proof_id).await?),
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

/// The proofs named by the notifications waiting in `wake`; `None` when some were lost (the
/// channel lagged), so the next pass looks at everything.
fn drain(wake: &mut broadcast::Receiver<String>) -> Option<HashSet<String>> {
    let mut proofs = HashSet::new();
    loop {
        match wake.try_recv() {
            Ok(id) => {
                proofs.insert(id);
            }
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => return Some(proofs),
            Err(broadcast::error::TryRecvError::Lagged(_)) => return None,
        }
    }
}
