//! The runner database role on real PostgreSQL: a login role in `proofjobs_runner`, presenting
//! the token the dispatcher issued for one proof, reaches that proof's rows and nothing else.
//! (Every other test's runners connect this way too, so the rights are known to be enough.)

use proofjobs_pipeline::{
    stage::Stage,
    state::{Db, NewTask, ProofStatus, RequesterRow},
};
use proofjobs_tests::*;
use sp1_prover_types::TaskType;

fn task(stage: Stage) -> NewTask {
    NewTask {
        id: proofjobs_pipeline::ids::new_task_id(),
        task_type: TaskType::ProveShard as i32,
        stage: Some(stage),
        inputs: vec![],
        outputs: vec![],
        parent_id: None,
        requester: String::new(),
    }
}

#[tokio::test]
async fn a_runner_reaches_only_the_rows_of_the_proof_its_token_names() {
    let test_db = TestDb::create().await.unwrap();
    let owner = test_db.db().await;
    insert_stage_ready_proof_of(&owner, "team-a", "own", Stage::ProveCore, TaskType::ProveShard, 2).await.unwrap();
    insert_stage_ready_proof_of(&owner, "team-b", "other", Stage::ProveCore, TaskType::ProveShard, 2).await.unwrap();
    owner.create_key("team-b", false, None, "").await.unwrap();
    owner.set_requester(&RequesterRow { name: "team-b".into(), weight: Some(2), ..Default::default() }, &[]).await.unwrap();
    let token = owner.issue_runner_token("own").await.unwrap();
    let url = test_db.runner_url().await;
    let runner = Db::connect_runner(&url, 2, Some(&token)).await.unwrap();
    let core = [Stage::ProveCore];

    // Its own proof: what a runner does works.
    assert_eq!(runner.get_proof("own").await.unwrap().map(|p| p.owner), Some("team-a".into()));
    runner.register_runner("r1", "own", &core, "local", "1").await.unwrap();
    runner.runner_heartbeat("r1").await.unwrap();
    let claimed = runner.claim_task("own", &core, "r1").await.unwrap().expect("a task of its own proof");
    runner.send_message(&claimed.id, b"progress").await.unwrap();
    assert_eq!(runner.messages_after(&claimed.id, 0).await.unwrap().len(), 1);
    runner.submit_task("own", &task(Stage::Compress)).await.unwrap();
    assert!(runner.complete_task(&claimed.id, &claimed.claim()).await.unwrap());

    // Another proof: invisible, and nothing can be written into it.
    assert!(runner.get_proof("other").await.unwrap().is_none(), "another requester's proof row is invisible");
    assert!(runner.claim_task("other", &core, "r1").await.unwrap().is_none(), "its tasks cannot be claimed");
    let refused = runner.submit_task("other", &task(Stage::Compress)).await.unwrap_err();
    assert!(format!("{refused:#}").contains("row-level security"), "{refused:#}");
    assert!(runner.register_runner("r2", "other", &core, "local", "1").await.is_err());
    assert!(!runner.finish_proof("other", ProofStatus::Failed, Some("x"), None, None).await.unwrap(), "cannot finish it");
    let untouched = owner.get_proof("other").await.unwrap().unwrap();
    assert_eq!(untouched.status, ProofStatus::Pending);

    // Tables that are none of a runner's business, and columns it may not change.
    for table in ["api_keys", "requesters", "runner_tokens", "runner_groups", "quotes"] {
        let err = sqlx::query(&format!("SELECT count(*) FROM {table}")).execute(runner.pool()).await.unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{table}: {err}");
    }
    for statement in ["UPDATE proofs SET owner = 'x' WHERE id = 'own'", "DELETE FROM tasks WHERE proof_id = 'own'"] {
        let err = sqlx::query(statement).execute(runner.pool()).await.unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{statement}: {err}");
    }
    runner.close().await;

    // No token, or a forged one: no proof at all.
    for token in [None, Some("0".repeat(64))] {
        let stranger = Db::connect_runner(&url, 1, token.as_deref()).await.unwrap();
        assert!(stranger.get_proof("own").await.unwrap().is_none(), "token {token:?}");
        stranger.close().await;
    }

    // It finishes its own proof; the owner role still sees everything.
    let runner = Db::connect_runner(&url, 1, Some(&token)).await.unwrap();
    assert!(runner.finish_proof("own", ProofStatus::Failed, Some("bad input"), None, None).await.unwrap());
    runner.close().await;
    assert_eq!(owner.get_proof("own").await.unwrap().unwrap().status, ProofStatus::Failed);
    assert_eq!(owner.list_proofs(&[], None, 10, 0).await.unwrap().len(), 2);
    owner.close().await;
}

/// The real runner, started with the runner role but without its proof's token (or with another
/// proof's): the database refuses its rows, and it exits 64 at once naming the token, so the
/// proof fails with that cause instead of retrying until its deadline.
#[tokio::test]
async fn a_runner_without_its_proofs_token_exits_64_naming_it() {
    let test_db = TestDb::create().await.unwrap();
    let owner = test_db.db().await;
    insert_stage_ready_proof_of(&owner, "team-a", "tokenless", Stage::ProveCore, TaskType::ProveShard, 1).await.unwrap();
    insert_stage_ready_proof_of(&owner, "team-b", "elsewhere", Stage::ProveCore, TaskType::ProveShard, 1).await.unwrap();
    let others = owner.issue_runner_token("elsewhere").await.unwrap();
    for token in [None, Some(others)] {
        let env = proofjobs_pipeline::runner_env::RunnerEnv {
            proof_id: "tokenless".into(),
            stages: vec![Stage::ProveCore],
            runner_id: None,
            backend: "local".into(),
            handle: None,
            database_url: test_db.runner_url().await,
            artifact_store: redis_url(),
            key_cache: None,
            prover: None,
            gpu_min_free_gib: None,
            idle_exit_secs: None,
            runner_token: token.clone(),
            gpus: None,
        };
        let out = std::process::Command::new(bin("task-runner"))
            .env_remove(proofjobs_pipeline::runner_env::RUNNER_TOKEN)
            .envs(env.to_vars())
            .output()
            .unwrap();
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(proofjobs_pipeline::exit::USAGE), "token {token:?}: {log}");
        assert!(log.contains("PROOFJOBS_RUNNER_TOKEN is missing or not this proof's"), "{log}");
    }
    assert_eq!(owner.get_proof("tokenless").await.unwrap().unwrap().status, ProofStatus::Pending, "nothing was touched");
    owner.close().await;
}
