//! The planner: what the dispatcher should do, decided from a snapshot of the durable state and
//! the backend's view of its runners, with no I/O. `reconcile.rs` gathers the snapshot and carries
//! the actions out; everything worth testing about scheduling — exits, retries, caps, deadlines,
//! hung runners, adoption after a restart — is decided here and unit-tested without services.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use proofjobs_pipeline::{
    exit::{classify, ExitClass},
    stage::labels::OVER_QUOTA,
    stage::{stage_list, Stage},
    state::{GroupState, ProofStatus, Quotas, RunnerRow},
};

use crate::backend::{Note, Placement, Share};

/// The rules the planner applies; operators set them on the dispatcher's command line.
#[derive(Debug, Clone)]
pub struct Policy {
    pub placement: Placement,
    /// How long a runner group's pods may wait for capacity (a GPU pool scaling from zero)
    /// before the proof fails with that cause.
    pub capacity_wait_limit: Duration,
    /// Runner failures (crashes, kills, hangs) a proof survives.
    pub max_runner_failures: i32,
    /// Hand-backs (exit 69: unsuitable node, 75: transient trouble) a runner group of a proof
    /// survives. Not the proof's fault, but a runner that always hands back must not loop until
    /// the deadline.
    pub max_runner_retries: i32,
    /// A runner whose heartbeat is older than this is hung: stopped, its tasks handed on.
    pub hung_after: Duration,
    /// How long runners of a finished proof get to exit by themselves (they check every 0.5 s).
    pub finished_grace: Duration,
}

impl Policy {
    pub fn new(placement: Placement) -> Policy {
        Policy {
            placement,
            capacity_wait_limit: Duration::from_secs(900),
            max_runner_failures: 3,
            max_runner_retries: 20,
            hung_after: Duration::from_secs(120),
            finished_grace: Duration::from_secs(5),
        }
    }
}

/// An unfinished proof as the planner needs it.
#[derive(Debug, Clone)]
pub struct ActiveProof {
    pub id: String,
    pub status: ProofStatus,
    pub deadline: DateTime<Utc>,
    /// Stages with tasks waiting for a runner.
    pub pending_stages: Vec<Stage>,
    /// The requester it belongs to.
    pub owner: String,
    /// Why it waits to start, as last recorded.
    pub waiting: Option<String>,
}

/// A live runner row of this backend, with what the backend sees of it.
#[derive(Debug, Clone)]
pub struct RunnerView {
    pub row: RunnerRow,
    /// `Some(code)` once the backend saw it end (`Some(None)`: ended without an exit code). A
    /// runner that recorded its own exit on its row counts as ended too.
    pub ended: Option<Option<i32>>,
    /// How long its pods have waited for capacity, when they are waiting.
    pub waiting_for_capacity: Option<Duration>,
}

impl RunnerView {
    /// How the runner ended, if it has: as the backend saw it, or as the runner recorded it on
    /// its row before its process went.
    pub fn end(&self) -> Option<Option<i32>> {
        self.ended.or_else(|| self.row.exited_at.map(|_| self.row.exit_code))
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub active: Vec<ActiveProof>,
    pub runners: Vec<RunnerView>,
    /// When the proofs of live runners that are no longer active finished (`None`: unknown).
    pub finished_at: HashMap<String, Option<DateTime<Utc>>>,
    pub groups: Vec<GroupState>,
    /// Whether this backend's runner rows carry heartbeats (Job rows do not; their pods do).
    pub heartbeats: bool,
    pub quotas: Quotas,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record that the runner's end was acted on (and the end itself when the runner could
    /// not); its unfinished tasks go back to the queue.
    CloseRunner {
        proof_id: String,
        runner_id: String,
        exit_code: Option<i32>,
        error: Option<String>,
    },
    /// Stop a runner (process group, Job) that should not run on.
    StopRunner {
        proof_id: String,
        runner: RunnerRow,
    },
    FailProof {
        proof_id: String,
        cause: String,
    },
    /// Count a runner of the group that ended without finishing (`counted`: a failure, else a
    /// hand-back) and start none before `until`.
    HoldBack {
        proof_id: String,
        stages: Vec<Stage>,
        counted: bool,
        until: DateTime<Utc>,
    },
    MarkRunning {
        proof_id: String,
    },
    /// Record why a pending proof does not start yet (`None`: it no longer waits).
    Wait {
        proof_id: String,
        reason: Option<String>,
    },
    /// Tell operators about a runner group (an Event on its Job).
    Tell {
        proof_id: String,
        runner: RunnerRow,
        note: Note,
    },
    Launch {
        proof_id: String,
        stages: Vec<Stage>,
        attempt: u32,
        deadline_secs: i64,
        share: Share,
    },
}

impl Action {
    pub fn proof_id(&self) -> &str {
        match self {
            Action::CloseRunner { proof_id, .. }
            | Action::StopRunner { proof_id, .. }
            | Action::FailProof { proof_id, .. }
            | Action::HoldBack { proof_id, .. }
            | Action::MarkRunning { proof_id }
            | Action::Wait { proof_id, .. }
            | Action::Tell { proof_id, .. }
            | Action::Launch { proof_id, .. } => proof_id,
        }
    }
}

/// The wait before the `n`-th retry of a runner group (1 s, 2 s, 4 s … 30 s).
pub fn backoff(n: i32) -> Duration {
    let max = Duration::from_secs(30);
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(max)
        .without_max_times()
        .build()
        .nth(n.saturating_sub(1).max(0) as usize)
        .unwrap_or(max)
}

/// Decide one pass. Actions of one proof come in the order they must run.
pub fn plan(snapshot: &Snapshot, policy: &Policy) -> Vec<Action> {
    let mut planner = Planner::new(snapshot, policy);
    for runner in &snapshot.runners {
        planner.runner(runner);
    }
    for proof in &snapshot.active {
        planner.proof(proof);
    }
    planner.actions
}

struct Planner<'a> {
    snapshot: &'a Snapshot,
    policy: &'a Policy,
    groups: BTreeMap<(String, Vec<Stage>), GroupState>,
    /// Counted failures per proof, all groups together.
    failures: HashMap<String, i32>,
    /// Active proofs by id.
    active: HashMap<&'a str, &'a ActiveProof>,
    /// Proofs failed by this pass: nothing more is started for them.
    failed: HashSet<String>,
    /// Runner groups that stay live after this pass.
    serving: HashSet<(String, Vec<Stage>)>,
    /// Started, unfinished proofs per requester, for the in-flight quota.
    in_flight: HashMap<&'a str, u32>,
    actions: Vec<Action>,
}

impl<'a> Planner<'a> {
    fn new(snapshot: &'a Snapshot, policy: &'a Policy) -> Self {
        let mut failures = HashMap::new();
        let mut groups = BTreeMap::new();
        for g in &snapshot.groups {
            *failures.entry(g.proof_id.clone()).or_default() += g.failures;
            groups.insert((g.proof_id.clone(), g.stages.clone()), g.clone());
        }
        let active = snapshot.active.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut in_flight = HashMap::new();
        for proof in snapshot.active.iter().filter(|p| p.status == ProofStatus::Running) {
            *in_flight.entry(proof.owner.as_str()).or_default() += 1;
        }
        Planner {
            snapshot,
            policy,
            groups,
            failures,
            active,
            failed: HashSet::new(),
            serving: HashSet::new(),
            in_flight,
            actions: Vec::new(),
        }
    }

    fn active(&self, proof_id: &str) -> Option<&'a ActiveProof> {
        self.active.get(proof_id).copied()
    }

    fn fail(&mut self, proof_id: &str, cause: String) {
        if self.failed.insert(proof_id.to_string()) {
            self.actions.push(Action::FailProof { proof_id: proof_id.to_string(), cause });
        }
    }

    /// Fail a proof because of what one of its runners did, and say so on the runner's group.
    fn fail_by(&mut self, row: &RunnerRow, cause: String) {
        if !self.failed.contains(&row.proof_id) {
            self.tell(row, true, "ProofFailed", cause.clone());
        }
        self.fail(&row.proof_id, cause);
    }

    fn tell(&mut self, row: &RunnerRow, warning: bool, reason: &'static str, message: String) {
        let note = Note { warning, reason, message };
        self.actions.push(Action::Tell { proof_id: row.proof_id.clone(), runner: row.clone(), note });
    }

    fn runner(&mut self, view: &RunnerView) {
        let row = &view.row;
        let now = self.snapshot.now;
        let close = |exit_code, error| Action::CloseRunner { proof_id: row.proof_id.clone(), runner_id: row.id.clone(), exit_code, error };
        if let Some(code) = view.end() {
            self.actions.push(close(code, None));
            self.account_for(row, code, None);
            return;
        }
        let silent = (now - row.last_seen()).to_std().unwrap_or_default();
        if self.snapshot.heartbeats && silent > self.policy.hung_after {
            let why = format!("hung: no heartbeat for {} s (limit {} s)", silent.as_secs(), self.policy.hung_after.as_secs());
            self.actions.push(Action::StopRunner { proof_id: row.proof_id.clone(), runner: row.clone() });
            self.actions.push(close(None, Some(why.clone())));
            self.tell(row, true, "Hung", format!("runner {} {why}; stopped, its tasks handed back", row.id));
            self.account_for(row, None, Some(why));
            return;
        }
        let Some(_proof) = self.active(&row.proof_id) else {
            // Runners of a finished proof see it and exit by themselves, so their Jobs stay for
            // operators to read; only one that lingers past the grace is stopped.
            let finished = self.snapshot.finished_at.get(&row.proof_id).copied().flatten();
            if finished.is_none_or(|t| (now - t).to_std().unwrap_or_default() > self.policy.finished_grace) {
                self.actions.push(Action::StopRunner { proof_id: row.proof_id.clone(), runner: row.clone() });
            }
            return;
        };
        self.serving.insert((row.proof_id.clone(), row.stages.clone()));
        if let Some(waited) = view.waiting_for_capacity.filter(|w| *w > self.policy.capacity_wait_limit) {
            let cause = format!(
                "waiting for capacity: no node could run stage {} for {} s (limit {} s); check the node group's scaling and the stage profile",
                stage_list(&row.stages),
                waited.as_secs(),
                self.policy.capacity_wait_limit.as_secs()
            );
            self.fail_by(row, cause);
        }
    }

    /// What a runner's end means for its proof.
    fn account_for(&mut self, row: &RunnerRow, code: Option<i32>, why: Option<String>) {
        let Some(proof) = self.active(&row.proof_id) else {
            // A runner that failed its proof itself (bad input) left its reason: tell it.
            if classify(code) == ExitClass::FailProof {
                let cause = row.error.clone().unwrap_or_else(|| format!("runner {} exited with code {}", row.id, code.unwrap_or(-1)));
                self.tell(row, true, "ProofFailed", cause);
            }
            return;
        };
        let now = self.snapshot.now;
        match classify(code) {
            ExitClass::Done => {}
            ExitClass::FailProof => {
                let cause = row
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("runner {} exited with code {} (bad input or configuration)", row.id, code.unwrap_or(-1)));
                self.fail_by(row, cause);
            }
            ExitClass::RetryNotCounted => {
                let retries = {
                    let group = self.group(row);
                    group.retries += 1;
                    group.retries
                };
                if retries > self.policy.max_runner_retries {
                    let cause = format!(
                        "runners of stage {} handed their work back {retries} times (exit 69: node unsuitable, 75: transient trouble), over the cap of {}; the last, {}, exited with {}{}",
                        stage_list(&row.stages),
                        self.policy.max_runner_retries,
                        row.id,
                        code.unwrap_or(-1),
                        last_words(row),
                    );
                    self.fail_by(row, cause);
                } else {
                    let wait = backoff(retries);
                    self.group(row).not_before = Some(now + wait);
                    self.actions.push(Action::HoldBack {
                        proof_id: proof.id.clone(),
                        stages: row.stages.clone(),
                        counted: false,
                        until: now + wait,
                    });
                    let message = format!(
                        "runner {} handed its work back (exit {}{}); next runner in {} s (hand-back {retries} of at most {})",
                        row.id,
                        code.unwrap_or(-1),
                        last_words(row),
                        wait.as_secs(),
                        self.policy.max_runner_retries
                    );
                    self.tell(row, true, "Retrying", message);
                }
            }
            ExitClass::RetryCounted => {
                let failures = self.failures.entry(proof.id.clone()).or_default();
                *failures += 1;
                let failures = *failures;
                let how = why.unwrap_or_else(|| {
                    code.map(|c| format!("exited with code {c}")).unwrap_or_else(|| "ended without an exit code (killed or lost)".into())
                });
                if failures >= self.policy.max_runner_failures {
                    let cause = format!("runners failed {failures} times; the last ({}, stages {}) {how}", row.id, stage_list(&row.stages));
                    self.fail_by(row, cause);
                } else {
                    let wait = backoff(failures);
                    let group = self.group(row);
                    group.failures += 1;
                    group.not_before = Some(now + wait);
                    self.actions.push(Action::HoldBack {
                        proof_id: proof.id.clone(),
                        stages: row.stages.clone(),
                        counted: true,
                        until: now + wait,
                    });
                    let message = format!(
                        "runner {} failed: {how}; next runner in {} s (failure {failures} of at most {} for the proof)",
                        row.id,
                        wait.as_secs(),
                        self.policy.max_runner_failures
                    );
                    self.tell(row, true, "Retrying", message);
                }
            }
        }
    }

    /// The retry state of a runner's group, created on first use.
    fn group(&mut self, row: &RunnerRow) -> &mut GroupState {
        self.groups.entry((row.proof_id.clone(), row.stages.clone())).or_insert_with(|| GroupState {
            proof_id: row.proof_id.clone(),
            stages: row.stages.clone(),
            ..Default::default()
        })
    }

    fn proof(&mut self, proof: &'a ActiveProof) {
        if self.failed.contains(&proof.id) {
            return;
        }
        let now = self.snapshot.now;
        if proof.deadline <= now {
            let queued = proof.waiting.as_deref().map(|w| format!(" (it was still {w})")).unwrap_or_default();
            self.fail(&proof.id, format!("deadline exceeded: the proof was due at {}{queued}", proof.deadline.to_rfc3339()));
            return;
        }
        if proof.pending_stages.is_empty() {
            return;
        }
        let quota = self.snapshot.quotas.of(&proof.owner);
        if proof.status == ProofStatus::Pending {
            // Oldest first: a requester at its quota starts its next proof when one of its
            // running proofs ends.
            let running = self.in_flight.entry(proof.owner.as_str()).or_default();
            if quota.max_in_flight.is_some_and(|max| *running >= max) {
                if proof.waiting.as_deref() != Some(OVER_QUOTA) {
                    self.actions.push(Action::Wait { proof_id: proof.id.clone(), reason: Some(OVER_QUOTA.into()) });
                }
                return;
            }
            *running += 1;
            self.actions.push(Action::MarkRunning { proof_id: proof.id.clone() });
        }
        let share = Share {
            requester: proof.owner.clone(),
            weight: quota.weight,
            max_gpu_runners: quota.max_gpu_runners,
            priority: quota.priority,
        };
        let mut wanted: Vec<Vec<Stage>> = proof.pending_stages.iter().map(|s| self.policy.placement.group_of(*s).to_vec()).collect();
        wanted.sort();
        wanted.dedup();
        for stages in wanted {
            if self.serving.contains(&(proof.id.clone(), stages.clone())) {
                continue;
            }
            let state = self.groups.get(&(proof.id.clone(), stages.clone()));
            if state.and_then(|g| g.not_before).is_some_and(|t| t > now) {
                continue;
            }
            let attempt = state.map(|g| g.launches).unwrap_or(0) as u32;
            let deadline_secs = (proof.deadline - now).num_seconds().max(1);
            self.actions.push(Action::Launch { proof_id: proof.id.clone(), stages, attempt, deadline_secs, share: share.clone() });
        }
    }
}

/// A runner's own last words as a suffix for a cause (`: …`), or nothing.
fn last_words(row: &RunnerRow) -> String {
    row.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
}

#[cfg(test)]
mod tests;
