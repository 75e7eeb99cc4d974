//! The task bus (sp1's WorkerClient on PostgreSQL) against a real database: the delivery rules
//! the SP1 controller relies on.

use std::time::Duration;

use proofjobs_pipeline::{
    bus::PgBus,
    ids,
    stage::Stage,
    state::{Claim, Notifications, TaskState},
};
use proofjobs_tests::*;
use sp1_prover::worker::{ProofId, TaskId, TaskMetadata, WorkerClient};
use sp1_prover_types::{TaskStatus, TaskType};

async fn bus_with_task() -> (TestDb, PgBus, String, String) {
    let test_db = TestDb::create().await.unwrap();
    let db = test_db.db().await;
    let proof_id = ids::new_proof_id();
    let tasks = insert_stage_ready_proof(&db, &proof_id, Stage::Execute, TaskType::CoreExecute, 1).await.unwrap();
    let notifications = Notifications::listen(&db).await.unwrap();
    (test_db, PgBus::new(db, notifications), proof_id, tasks[0].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_subscriber_reports_tasks_named_before_its_sender_was_dropped() {
    let (_db, bus, proof_id, task_id) = bus_with_task().await;
    let (subscriber, mut events) = bus.subscriber(ProofId::new(proof_id.clone())).await.unwrap().stream();
    subscriber.subscribe(TaskId::new(task_id.clone())).unwrap();
    // The SP1 compress tree drops its subscriber once every shard task is named.
    drop(subscriber);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bus.complete_task(ProofId::new(proof_id), TaskId::new(task_id.clone()), TaskMetadata::default()).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("no event").expect("stream ended");
    assert_eq!(event, (TaskId::new(task_id), TaskStatus::Succeeded));
}

#[tokio::test(flavor = "multi_thread")]
async fn task_messages_arrive_in_order_and_the_stream_ends_with_the_task() {
    let (_db, bus, proof_id, task_id) = bus_with_task().await;
    let task = TaskId::new(task_id.clone());
    bus.send_task_message(&task, b"one".to_vec()).await.unwrap();
    let mut rx = bus.subscribe_task_messages(&task).await.unwrap();
    bus.send_task_message(&task, b"two".to_vec()).await.unwrap();
    bus.send_task_message(&task, b"three".to_vec()).await.unwrap();
    bus.complete_task(ProofId::new(proof_id), task.clone(), TaskMetadata::default()).await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("stream did not end") {
        got.push(m);
    }
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_is_claimed_once_and_a_lost_runner_gives_it_back() {
    let (test_db, _bus, proof_id, task_id) = bus_with_task().await;
    let db = test_db.db().await;
    let first = db.claim_task(&proof_id, &[Stage::Execute], "runner_a").await.unwrap().expect("claimable");
    assert_eq!(first.id, task_id);
    assert!(db.claim_task(&proof_id, &[Stage::Execute], "runner_b").await.unwrap().is_none(), "claimed twice");
    assert!(db.claim_task(&proof_id, &[Stage::ProveCore], "runner_b").await.unwrap().is_none(), "wrong stage");
    assert_eq!(db.requeue_runner_tasks("runner_a").await.unwrap(), 1);
    let again = db.claim_task(&proof_id, &[Stage::Execute], "runner_b").await.unwrap().expect("requeued");
    assert_eq!((again.id, again.attempts), (task_id, 2));
}

/// Fencing: only the holder of a claim finishes a task. A runner declared gone (its tasks handed
/// back) that wakes up later and reports its result changes nothing; the runner that claimed the
/// task again is the one whose success stands.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_finish_from_a_runner_declared_gone_changes_nothing() {
    let (test_db, _bus, proof_id, task_id) = bus_with_task().await;
    let db = test_db.db().await;
    db.register_runner("runner_a", &proof_id, &[Stage::Execute], "local", "1").await.unwrap();
    let a = db.claim_task(&proof_id, &[Stage::Execute], "runner_a").await.unwrap().expect("claimable");
    // A is declared gone (hung, pod vanished): its row closed, its task back in the queue.
    db.runner_reaped("runner_a", None, Some("hung: no heartbeat for 121 s (limit 120 s)")).await.unwrap();
    let b = db.claim_task(&proof_id, &[Stage::Execute], "runner_b").await.unwrap().expect("handed back");
    assert_eq!((b.id.as_str(), b.attempts), (task_id.as_str(), 2));
    // A's late result: neither a success nor a failure lands.
    assert!(!db.complete_task(&a.id, &a.claim()).await.unwrap(), "a stale claim completed the task");
    assert_eq!(db.fail_task(&a.id, &a.claim(), "late failure", true).await.unwrap(), None);
    // The current attempt number under another runner's name is not the claim either.
    let forged = Claim { runner_id: "runner_a".into(), attempt: 2 };
    assert!(!db.complete_task(&task_id, &forged).await.unwrap());
    assert_eq!(db.task_claim(&task_id).await.unwrap(), Some(b.claim()), "B no longer holds the task");
    // B's result is the one kept, and nothing downgrades it afterwards.
    assert!(db.complete_task(&b.id, &b.claim()).await.unwrap());
    assert!(!db.complete_task(&a.id, &a.claim()).await.unwrap());
    assert_eq!(db.fail_task(&b.id, &b.claim(), "duplicate", false).await.unwrap(), None);
    assert_eq!(db.task_states(std::slice::from_ref(&task_id)).await.unwrap(), vec![(task_id.clone(), TaskState::Succeeded)]);
}

/// The notification listener stops when told, and lets go of its connection before the pool
/// closes: nothing is left to talk to a database that is about to stop (embedded mode stops its
/// PostgreSQL right after).
#[tokio::test(flavor = "multi_thread")]
async fn the_notification_listener_lets_go_of_its_connection_on_shutdown() {
    let test_db = TestDb::create().await.unwrap();
    let db = test_db.db().await;
    let listening = |db: proofjobs_pipeline::state::Db, name: String| async move {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query ILIKE 'listen%'")
            .bind(name)
            .fetch_one(db.pool())
            .await
            .unwrap();
        n
    };
    let notifications = Notifications::listen(&db).await.unwrap();
    let observer = TestDb { url: test_db.url.clone(), name: test_db.name.clone() }.db().await;
    assert_eq!(listening(observer.clone(), test_db.name.clone()).await, 1, "one LISTEN session while listening");
    notifications.shutdown().await;
    db.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while listening(observer.clone(), test_db.name.clone()).await != 0 {
        assert!(std::time::Instant::now() < deadline, "the LISTEN session outlived shutdown");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A waiter still works on its timer after the listener is gone.
    let mut rx = notifications.subscribe();
    let started = std::time::Instant::now();
    proofjobs_pipeline::state::wait_for(&mut rx, None, Duration::from_millis(300)).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
}
