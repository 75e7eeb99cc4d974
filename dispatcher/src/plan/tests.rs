//! The planner's cases, each a snapshot as the database and a fake backend would show it.

use chrono::TimeDelta;

use super::*;

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

const NOW: i64 = 1_000;

fn proof(id: &str, pending: &[Stage]) -> ActiveProof {
    ActiveProof {
        id: id.into(),
        status: ProofStatus::Running,
        deadline: at(NOW + 3_600),
        pending_stages: pending.to_vec(),
        owner: "a".into(),
        waiting: None,
    }
}

fn row(id: &str, proof_id: &str, stages: &[Stage]) -> RunnerRow {
    RunnerRow {
        id: id.into(),
        proof_id: proof_id.into(),
        stages: stages.to_vec(),
        backend: "fake".into(),
        handle: "1".into(),
        heartbeat_at: Some(at(NOW - 3)),
        started_at: at(NOW - 60),
        error: None,
        exited_at: None,
        exit_code: None,
    }
}

/// What a fake backend reports about one runner.
fn live(row: RunnerRow) -> RunnerView {
    RunnerView { row, ended: None, waiting_for_capacity: None }
}

fn ended(row: RunnerRow, code: Option<i32>) -> RunnerView {
    RunnerView { row, ended: Some(code), waiting_for_capacity: None }
}

fn snapshot(active: Vec<ActiveProof>, runners: Vec<RunnerView>) -> Snapshot {
    Snapshot { now: at(NOW), active, runners, finished_at: HashMap::new(), groups: Vec::new(), heartbeats: true, quotas: Quotas::default() }
}

fn group(proof_id: &str, stages: &[Stage], failures: i32, retries: i32, not_before: Option<DateTime<Utc>>, launches: i64) -> GroupState {
    GroupState { proof_id: proof_id.into(), stages: stages.to_vec(), failures, retries, not_before, launches }
}

fn per_stage() -> Policy {
    Policy::new(Placement::per_stage())
}

fn launches(actions: &[Action]) -> Vec<(String, Vec<Stage>, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Launch { proof_id, stages, attempt, .. } => Some((proof_id.clone(), stages.clone(), *attempt)),
            _ => None,
        })
        .collect()
}

fn failure(actions: &[Action], proof_id: &str) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::FailProof { proof_id: p, cause } if p == proof_id => Some(cause.clone()),
        _ => None,
    })
}

const EXEC: &[Stage] = &[Stage::Execute];
const CORE: &[Stage] = &[Stage::ProveCore];

#[test]
fn a_new_proof_gets_its_first_runner_and_is_marked_running() {
    let mut new = proof("p", EXEC);
    new.status = ProofStatus::Pending;
    let actions = plan(&snapshot(vec![new], vec![]), &per_stage());
    assert_eq!(actions[0], Action::MarkRunning { proof_id: "p".into() });
    assert_eq!(launches(&actions), vec![("p".into(), EXEC.to_vec(), 0)]);
    let Action::Launch { deadline_secs, .. } = &actions[1] else { panic!("{actions:?}") };
    assert_eq!(*deadline_secs, 3_600);
}

#[test]
fn a_stage_that_becomes_ready_gets_one_runner_group() {
    // The execute runner is live; prove-core tasks just arrived.
    let snap = snapshot(vec![proof("p", &[Stage::Execute, Stage::ProveCore])], vec![live(row("r-exec", "p", EXEC))]);
    assert_eq!(launches(&plan(&snap, &per_stage())), vec![("p".into(), CORE.to_vec(), 0)]);
    // Once its runner is live, nothing more starts.
    let snap = snapshot(vec![proof("p", CORE)], vec![live(row("r-exec", "p", EXEC)), live(row("r-core", "p", CORE))]);
    assert!(plan(&snap, &per_stage()).is_empty());
    // With one runner for every stage, the live one serves the new stage too.
    let all = Stage::ALL.to_vec();
    let snap = snapshot(vec![proof("p", CORE)], vec![live(row("r", "p", &all))]);
    assert!(plan(&snap, &Policy::new(Placement::single_runner())).is_empty());
}

#[test]
fn a_runner_that_finished_its_work_is_closed_and_replaced_only_if_work_is_waiting() {
    let snap = snapshot(vec![proof("p", &[])], vec![ended(row("r", "p", EXEC), Some(0))]);
    assert_eq!(
        plan(&snap, &per_stage()),
        vec![Action::CloseRunner { proof_id: "p".into(), runner_id: "r".into(), exit_code: Some(0), error: None }]
    );
    // Work arrived just as it left: the next runner starts at once, attempt 1.
    let mut snap = snapshot(vec![proof("p", EXEC)], vec![ended(row("r", "p", EXEC), Some(0))]);
    snap.groups = vec![group("p", EXEC, 0, 0, None, 1)];
    assert_eq!(launches(&plan(&snap, &per_stage())), vec![("p".into(), EXEC.to_vec(), 1)]);
}

#[test]
fn bad_input_and_bad_configuration_fail_the_proof_with_the_runners_words() {
    let mut r = row("r", "p", EXEC);
    r.error = Some("the program is not a valid SP1 RISC-V ELF".into());
    let actions = plan(&snapshot(vec![proof("p", &[])], vec![ended(r, Some(65))]), &per_stage());
    assert_eq!(failure(&actions, "p").as_deref(), Some("the program is not a valid SP1 RISC-V ELF"));
    let actions = plan(&snapshot(vec![proof("p", EXEC)], vec![ended(row("r", "p", EXEC), Some(64))]), &per_stage());
    assert!(failure(&actions, "p").unwrap().contains("exited with code 64"), "{actions:?}");
    assert!(launches(&actions).is_empty(), "a failed proof starts nothing");
}

#[test]
fn hand_backs_are_held_back_without_counting_as_failures() {
    for code in [69, 75] {
        let actions = plan(&snapshot(vec![proof("p", CORE)], vec![ended(row("r", "p", CORE), Some(code))]), &per_stage());
        assert!(
            actions.contains(&Action::HoldBack { proof_id: "p".into(), stages: CORE.to_vec(), counted: false, until: at(NOW + 1) }),
            "{actions:?}"
        );
        assert!(failure(&actions, "p").is_none());
        assert!(launches(&actions).is_empty(), "held back: no runner until the backoff passes");
    }
}

#[test]
fn crashes_are_counted_and_backed_off_exponentially() {
    for code in [Some(1), Some(70), Some(137), None] {
        let mut snap = snapshot(vec![proof("p", CORE)], vec![ended(row("r", "p", CORE), code)]);
        snap.groups = vec![group("p", CORE, 1, 0, None, 2)];
        let actions = plan(&snap, &per_stage());
        assert!(
            actions.contains(&Action::HoldBack { proof_id: "p".into(), stages: CORE.to_vec(), counted: true, until: at(NOW + 2) }),
            "{code:?}: {actions:?}"
        );
    }
    assert_eq!(backoff(1), Duration::from_secs(1));
    assert_eq!(backoff(3), Duration::from_secs(4));
    assert_eq!(backoff(40), Duration::from_secs(30));
}

#[test]
fn the_failure_cap_counts_every_group_of_the_proof() {
    let mut snap = snapshot(vec![proof("p", CORE)], vec![ended(row("r", "p", CORE), Some(1))]);
    snap.groups = vec![group("p", EXEC, 1, 0, None, 2), group("p", CORE, 1, 0, None, 2)];
    let cause = failure(&plan(&snap, &per_stage()), "p").expect("third failure fails the proof");
    assert!(cause.contains("failed 3 times") && cause.contains("exited with code 1"), "{cause}");
    // Two crashes in one pass count twice.
    let mut snap = snapshot(vec![proof("p", &[])], vec![ended(row("a", "p", CORE), Some(1)), ended(row("b", "p", EXEC), None)]);
    snap.groups = vec![group("p", CORE, 1, 0, None, 1)];
    assert!(failure(&plan(&snap, &per_stage()), "p").unwrap().contains("ended without an exit code"));
}

#[test]
fn hand_backs_are_capped_too() {
    let policy = Policy { max_runner_retries: 4, ..per_stage() };
    let mut r = row("r", "p", CORE);
    r.error = Some("no usable GPU on this node".into());
    let mut snap = snapshot(vec![proof("p", CORE)], vec![ended(r, Some(69))]);
    snap.groups = vec![group("p", CORE, 0, 4, None, 5)];
    let cause = failure(&plan(&snap, &policy), "p").expect("fifth hand-back fails the proof");
    assert!(cause.contains("handed their work back 5 times") && cause.contains("cap of 4") && cause.contains("no usable GPU"), "{cause}");
}

#[test]
fn backoff_is_honoured_and_attempts_continue_from_the_database() {
    let mut snap = snapshot(vec![proof("p", CORE)], vec![]);
    snap.groups = vec![group("p", CORE, 1, 0, Some(at(NOW + 5)), 3)];
    assert!(launches(&plan(&snap, &per_stage())).is_empty());
    snap.groups = vec![group("p", CORE, 1, 0, Some(at(NOW - 1)), 3)];
    assert_eq!(launches(&plan(&snap, &per_stage())), vec![("p".into(), CORE.to_vec(), 3)]);
}

#[test]
fn a_proof_past_its_deadline_fails_and_starts_nothing() {
    let mut late = proof("p", CORE);
    late.deadline = at(NOW - 1);
    let actions = plan(&snapshot(vec![late], vec![]), &per_stage());
    assert!(failure(&actions, "p").unwrap().starts_with("deadline exceeded"));
    assert!(launches(&actions).is_empty());
}

#[test]
fn runners_of_a_cancelled_proof_get_a_grace_then_are_stopped() {
    let mut snap = snapshot(vec![], vec![live(row("r", "p", CORE))]);
    snap.finished_at.insert("p".into(), Some(at(NOW - 2)));
    assert!(plan(&snap, &per_stage()).is_empty(), "it sees the cancel and exits by itself");
    snap.finished_at.insert("p".into(), Some(at(NOW - 10)));
    assert!(matches!(&plan(&snap, &per_stage())[..], [Action::StopRunner { runner, .. }] if runner.id == "r"));
    // Its exit is recorded, and nothing is counted against a finished proof.
    let snap = snapshot(vec![], vec![ended(row("r", "p", CORE), Some(75))]);
    assert!(matches!(&plan(&snap, &per_stage())[..], [Action::CloseRunner { .. }]));
}

#[test]
fn waiting_for_capacity_past_the_limit_fails_the_proof() {
    let policy = Policy { capacity_wait_limit: Duration::from_secs(300), ..per_stage() };
    let mut waiting = live(row("r", "p", CORE));
    waiting.waiting_for_capacity = Some(Duration::from_secs(200));
    assert!(plan(&snapshot(vec![proof("p", &[])], vec![waiting.clone()]), &policy).is_empty());
    waiting.waiting_for_capacity = Some(Duration::from_secs(301));
    let cause = failure(&plan(&snapshot(vec![proof("p", &[])], vec![waiting]), &policy), "p").unwrap();
    assert!(cause.contains("waiting for capacity") && cause.contains("prove-core") && cause.contains("301 s"), "{cause}");
}

#[test]
fn a_hung_runner_is_stopped_its_tasks_handed_on_and_counted() {
    let mut hung = row("r", "p", CORE);
    hung.started_at = at(NOW - 600);
    hung.heartbeat_at = Some(at(NOW - 121));
    let actions = plan(&snapshot(vec![proof("p", &[])], vec![live(hung.clone())]), &per_stage());
    assert!(matches!(&actions[0], Action::StopRunner { runner, .. } if runner.id == "r"), "{actions:?}");
    assert!(
        matches!(&actions[1], Action::CloseRunner { error: Some(e), exit_code: None, .. } if e.contains("no heartbeat for 121 s")),
        "{actions:?}"
    );
    assert!(matches!(&actions[2], Action::Tell { note, .. } if note.reason == "Hung" && note.warning), "{actions:?}");
    assert!(matches!(&actions[3], Action::HoldBack { counted: true, .. }), "{actions:?}");
    // A backend whose rows carry no heartbeats (Kubernetes Jobs) is not judged by them.
    let mut snap = snapshot(vec![proof("p", &[])], vec![live(hung)]);
    snap.heartbeats = false;
    assert!(plan(&snap, &per_stage()).is_empty());
    // A runner that never beat is judged from its start.
    let mut silent = row("r", "p", CORE);
    silent.heartbeat_at = None;
    silent.started_at = at(NOW - 30);
    assert!(plan(&snapshot(vec![proof("p", &[])], vec![live(silent)]), &per_stage()).is_empty());
}

#[test]
fn a_restarted_dispatcher_adopts_live_runners_instead_of_starting_twins() {
    // Rows written by the previous dispatcher; the backend still sees both runners.
    let snap = snapshot(
        vec![proof("p", &[Stage::Execute, Stage::ProveCore])],
        vec![live(row("old-exec", "p", EXEC)), live(row("old-core", "p", CORE))],
    );
    assert!(plan(&snap, &per_stage()).is_empty());
    // One of them ended while no dispatcher ran: recorded now, and replaced after its backoff.
    let mut snap = snapshot(vec![proof("p", CORE)], vec![live(row("old-exec", "p", EXEC)), ended(row("old-core", "p", CORE), None)]);
    snap.groups = vec![group("p", CORE, 0, 0, None, 1)];
    let actions = plan(&snap, &per_stage());
    assert!(matches!(&actions[0], Action::CloseRunner { runner_id, .. } if runner_id == "old-core"));
    assert!(matches!(&actions[1], Action::HoldBack { counted: true, .. }));
    assert!(launches(&actions).is_empty());
}

#[test]
fn one_proofs_trouble_leaves_the_others_alone() {
    let mut late = proof("late", CORE);
    late.deadline = at(NOW) - TimeDelta::seconds(1);
    let actions = plan(&snapshot(vec![late, proof("ok", EXEC)], vec![ended(row("r", "late", CORE), Some(65))]), &per_stage());
    assert_eq!(actions.iter().filter(|a| matches!(a, Action::FailProof { .. })).count(), 1, "{actions:?}");
    assert_eq!(launches(&actions), vec![("ok".into(), EXEC.to_vec(), 0)]);
    assert!(actions.iter().all(|a| a.proof_id() == "late" || a.proof_id() == "ok"));
}

#[test]
fn an_exit_the_runner_recorded_itself_counts_before_the_backend_sees_it() {
    // The runner wrote its exit code and last words, and its process is still on its way out.
    let mut r = row("r", "p", CORE);
    r.exited_at = Some(at(NOW - 1));
    r.exit_code = Some(69);
    r.error = Some("no usable GPU on this node: Tesla T4".into());
    let actions = plan(&snapshot(vec![proof("p", CORE)], vec![live(r)]), &per_stage());
    assert!(matches!(&actions[0], Action::CloseRunner { exit_code: Some(69), .. }), "{actions:?}");
    assert!(matches!(&actions[1], Action::HoldBack { counted: false, .. }), "{actions:?}");
    assert!(launches(&actions).is_empty());
}

#[test]
fn operators_are_told_why_a_group_is_retried_or_its_proof_failed() {
    let notes = |actions: &[Action]| -> Vec<(&'static str, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Tell { note, .. } => Some((note.reason, note.message.clone())),
                _ => None,
            })
            .collect()
    };
    let actions = plan(&snapshot(vec![proof("p", CORE)], vec![ended(row("r", "p", CORE), Some(75))]), &per_stage());
    let told = notes(&actions);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].0, "Retrying");
    assert!(told[0].1.contains("exit 75") && told[0].1.contains("next runner in 1 s") && told[0].1.contains("1 of at most 20"), "{told:?}");
    let mut bad = row("r", "p", EXEC);
    bad.error = Some("stdin is not a bincode SP1Stdin".into());
    let told = notes(&plan(&snapshot(vec![proof("p", &[])], vec![ended(bad, Some(65))]), &per_stage()));
    assert_eq!(told, vec![("ProofFailed", "stdin is not a bincode SP1Stdin".to_string())]);
    // A runner that failed its proof itself (the proof is over when the dispatcher looks) still has it told.
    let mut bad = row("r", "p", EXEC);
    bad.error = Some("the program is not a valid SP1 RISC-V ELF".into());
    let told = notes(&plan(&snapshot(vec![], vec![ended(bad, Some(65))]), &per_stage()));
    assert_eq!(told, vec![("ProofFailed", "the program is not a valid SP1 RISC-V ELF".to_string())]);
    // A clean exit is nothing to tell.
    assert!(notes(&plan(&snapshot(vec![proof("p", &[])], vec![ended(row("r", "p", EXEC), Some(0))]), &per_stage())).is_empty());
}

fn pending(id: &str, owner: &str) -> ActiveProof {
    ActiveProof { status: ProofStatus::Pending, owner: owner.into(), ..proof(id, EXEC) }
}

fn quota(max_in_flight: u32) -> proofjobs_pipeline::state::Quota {
    proofjobs_pipeline::state::Quota { max_in_flight: Some(max_in_flight), ..Default::default() }
}

#[test]
fn a_requester_at_its_in_flight_quota_waits_visibly_and_others_do_not() {
    // a may run 2 proofs; one runs, three wait in creation order. b has no quota of its own.
    let mut snap = snapshot(vec![proof("a1", &[]), pending("a2", "a"), pending("a3", "a"), pending("b1", "b"), pending("a4", "a")], vec![]);
    snap.quotas.by_requester.insert("a".into(), quota(2));
    let actions = plan(&snap, &per_stage());
    let started: Vec<String> = launches(&actions).into_iter().map(|(p, _, _)| p).collect();
    assert_eq!(started, vec!["a2", "b1"], "a's oldest pending proof fills its quota; b is not held by a's");
    for waiting in ["a3", "a4"] {
        assert!(actions.contains(&Action::Wait { proof_id: waiting.into(), reason: Some(OVER_QUOTA.into()) }), "{actions:?}");
        assert!(!actions.contains(&Action::MarkRunning { proof_id: waiting.into() }));
    }
    // Already marked: not written again. When a1 ends, a3 (the older) starts, a4 still waits.
    snap.active[2].waiting = Some(OVER_QUOTA.into());
    snap.active[4].waiting = Some(OVER_QUOTA.into());
    snap.active[1].status = ProofStatus::Running;
    snap.active.remove(0);
    snap.active.retain(|p| p.id != "b1");
    let actions = plan(&snap, &per_stage());
    assert_eq!(launches(&actions).into_iter().map(|(p, _, _)| p).collect::<Vec<_>>(), vec!["a2", "a3"]);
    assert!(!actions.iter().any(|a| matches!(a, Action::Wait { .. })), "a4's reason stands: {actions:?}");
    // The defaults row applies to a requester without its own.
    let mut snap = snapshot(vec![proof("c1", &[]), pending("c2", "c")], vec![]);
    snap.active[0].owner = "c".into();
    snap.quotas.default = quota(1);
    assert!(launches(&plan(&snap, &per_stage())).is_empty());
}

#[test]
fn a_queued_proof_past_its_deadline_fails_saying_it_was_queued() {
    let mut late = pending("p", "a");
    late.deadline = at(NOW - 1);
    late.waiting = Some(OVER_QUOTA.into());
    let cause = failure(&plan(&snapshot(vec![late], vec![]), &per_stage()), "p").unwrap();
    assert!(cause.contains("deadline exceeded") && cause.contains(OVER_QUOTA), "{cause}");
}

#[test]
fn launches_carry_the_requesters_share() {
    let mut snap = snapshot(vec![pending("p", "team")], vec![]);
    snap.quotas
        .by_requester
        .insert("team".into(), proofjobs_pipeline::state::Quota { weight: 3, max_gpu_runners: Some(2), ..Default::default() });
    let actions = plan(&snap, &per_stage());
    let Some(Action::Launch { share, .. }) = actions.iter().find(|a| matches!(a, Action::Launch { .. })) else { panic!("{actions:?}") };
    assert_eq!(share, &Share { requester: "team".into(), weight: 3, max_gpu_runners: Some(2), priority: Default::default() });
}
