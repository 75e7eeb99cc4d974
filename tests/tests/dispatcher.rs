//! The dispatcher's retry rules against real PostgreSQL and real task-runner processes: a runner
//! that keeps handing its work back stops being restarted at the cap, and a runner that stops
//! beating is stopped and its tasks handed on.

use std::{os::unix::process::CommandExt, process::Stdio, sync::Arc, time::Duration};

use proofjobs_dispatcher::{local::LocalBackend, Dispatcher, Placement, Policy};
use proofjobs_pipeline::{
    ids,
    stage::Stage,
    state::{Db, Notifications, ProofStatus, TaskState},
};
use proofjobs_tests::*;
use sp1_prover_types::TaskType;

/// A proof whose one task (execute-only) waits in the execute stage.
async fn proof_with_waiting_task(db: &Db) -> (String, String) {
    let proof_id = ids::new_proof_id();
    let tasks = insert_stage_ready_proof(db, &proof_id, Stage::Execute, TaskType::ExecuteOnly, 1).await.unwrap();
    (proof_id, tasks[0].clone())
}

/// Runners that cannot open the state exit 75 ("transient, hand back") every time. Without a
/// cap they would be restarted until the deadline; with `max_runner_retries = 2` the third
/// hand-back fails the proof, with a cause that says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_that_always_hands_back_is_capped() {
    let test_db = TestDb::create().await.unwrap();
    let db = test_db.db().await;
    let (proof_id, _) = proof_with_waiting_task(&db).await;
    let logs = tempfile::tempdir().unwrap();
    // The right server, a database that is not there: the runner's connect fails at once.
    let unreachable_db = format!("{}_missing", test_db.url);
    let backend = LocalBackend::new(bin("task-runner"), logs.path().into(), unreachable_db, "file:///nonexistent".into(), vec![]).unwrap();
    let policy = Policy { max_runner_retries: 2, ..Policy::new(Placement::single_runner()) };
    let notifications = Notifications::listen(&db).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let dispatcher = tokio::spawn(Dispatcher::new(db.clone(), Arc::new(backend), policy).run(notifications.clone(), stopped));

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let proof = loop {
        let proof = db.get_proof(&proof_id).await.unwrap().unwrap();
        if proof.status.is_terminal() || std::time::Instant::now() > deadline {
            break proof;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.send(true).unwrap();
    dispatcher.await.unwrap().unwrap();
    notifications.shutdown().await;

    assert_eq!(proof.status, ProofStatus::Failed, "still {:?} after 90 s", proof.status);
    let cause = proof.failure_cause.unwrap_or_default();
    assert!(cause.contains("handed their work back 3 times") && cause.contains("cap of 2") && cause.contains("exited with 75"), "{cause}");
    assert_eq!(db.runner_handles().await.unwrap().len(), 3, "one runner per try, none after the cap");
}

/// A runner frozen mid-task (SIGSTOP stands in for a hung GPU driver or a wedged process) stops
/// heartbeating. The dispatcher declares it hung after the limit: its task goes back to the queue,
/// the failure is counted, and the process is killed.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_runner_is_stopped_and_its_task_handed_on() {
    let test_db = TestDb::create().await.unwrap();
    let db = test_db.db().await;
    let (proof_id, task_id) = proof_with_waiting_task(&db).await;
    let store = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", store.path().display());
    let runner_id = ids::new_runner_id();
    // A real runner of an idle stage: it registers, heartbeats, and waits for work.
    let mut runner = std::process::Command::new(bin("task-runner"))
        .args(["--proof", &proof_id, "--stages", "wrap", "--runner-id", &runner_id, "--idle-exit-secs", "600"])
        .args(["--database-url", &test_db.url, "--artifact-store", &store_url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = runner.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !db.unreaped_runners("local").await.unwrap().iter().any(|r| r.id == runner_id && r.heartbeat_at.is_some()) {
        assert!(std::time::Instant::now() < deadline, "the runner never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It holds the proof's task when it freezes.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let held = db.claim_task(&proof_id, &[Stage::Execute], &runner_id).await.unwrap().expect("claimable");
    assert_eq!(held.id, task_id);

    let logs = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(bin("task-runner"), logs.path().into(), test_db.url.clone(), store_url, vec![]).unwrap();
    let policy = Policy { hung_after: Duration::from_secs(3), ..Policy::new(Placement::per_stage()) };
    let dispatcher = Dispatcher::new(db.clone(), Arc::new(backend), policy);
    // Within the limit it is left alone.
    dispatcher.reconcile().await.unwrap();
    assert_eq!(db.task_claim(&task_id).await.unwrap().map(|c| c.runner_id), Some(runner_id.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while db.unreaped_runners("local").await.unwrap().iter().any(|r| r.id == runner_id) {
        assert!(std::time::Instant::now() < deadline, "the hung runner was never declared hung");
        tokio::time::sleep(Duration::from_millis(500)).await;
        dispatcher.reconcile().await.unwrap();
    }
    // Its task is back in the queue, and the failure counted against the proof's group.
    assert_eq!(db.task_states(std::slice::from_ref(&task_id)).await.unwrap(), vec![(task_id.clone(), TaskState::Pending)]);
    let error = db.runner_error(&runner_id).await.unwrap().unwrap_or_default();
    assert!(error.contains("hung: no heartbeat"), "{error}");
    let groups = db.group_states(std::slice::from_ref(&proof_id), "local").await.unwrap();
    assert_eq!(groups.iter().map(|g| g.failures).sum::<i32>(), 1, "{groups:?}");
    assert_eq!(db.get_proof(&proof_id).await.unwrap().unwrap().status, ProofStatus::Pending, "one hang does not fail the proof");
    // And the frozen process is killed (SIGTERM waits for a stopped process; SIGKILL follows).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = runner.try_wait() {
            assert!(!status.success(), "{status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the hung runner is still alive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
