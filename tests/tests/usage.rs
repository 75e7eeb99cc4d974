//! Usage accounting on the real api, dispatcher and PostgreSQL: task- and runner-seconds per proof
//! (`Get`) and per requester (`proofctl admin usage`) add up, and the cost follows the prices.

use std::time::{Duration, Instant};

use proofjobs_api::proto::GetRequest;
use proofjobs_pipeline::stage::Stage;
use proofjobs_tests::*;
use sp1_prover_types::TaskType;

fn proofctl(args: &[&str]) -> String {
    let out = std::process::Command::new(bin("proofctl")).args(args).env_remove("PROOFJOBS_API_KEY").output().unwrap();
    assert!(out.status.success(), "proofctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The numbers of `requester`'s row in `proofctl admin usage`.
fn usage_row(table: &str, requester: &str) -> Vec<f64> {
    let line =
        table.lines().find(|l| l.split_whitespace().next() == Some(requester)).unwrap_or_else(|| panic!("no {requester} in\n{table}"));
    line.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect()
}

/// Synthetic rows with known times: the sums are exact, GPU and CPU runners are told apart, and
/// a Job row (which stands for its pods) is not counted twice.
#[tokio::test]
async fn usage_sums_task_and_runner_seconds_by_pool() {
    let test_db = TestDb::create().await.unwrap();
    let db = test_db.db().await;
    let tasks = insert_stage_ready_proof_of(&db, "alice", "u1", Stage::ProveCore, TaskType::ProveShard, 2).await.unwrap();
    insert_stage_ready_proof_of(&db, "bob", "u2", Stage::ProveCore, TaskType::ProveShard, 1).await.unwrap();
    for (id, backend, gpus, secs) in
        [("gpu-pod", "kubernetes-pod", 1, 100), ("cpu-pod", "kubernetes-pod", 0, 40), ("job", "kubernetes", 0, 500)]
    {
        db.register_runner(id, "u1", &[Stage::ProveCore], backend, "j").await.unwrap();
        db.set_runner_gpus(id, gpus).await.unwrap();
        sqlx::query("UPDATE runners SET started_at = now() - make_interval(secs => $2), exited_at = now() WHERE id = $1")
            .bind(id)
            .bind(secs as f64)
            .execute(db.pool())
            .await
            .unwrap();
    }
    for (task, runner, secs) in [(&tasks[0], "gpu-pod", 30.0), (&tasks[1], "cpu-pod", 12.5)] {
        sqlx::query(
            "UPDATE tasks SET runner_id = $2, status = 'succeeded', started_at = now() - make_interval(secs => $3), finished_at = now() WHERE id = $1",
        )
        .bind(task)
        .bind(runner)
        .bind(secs)
        .execute(db.pool())
        .await
        .unwrap();
    }
    let u = db.proof_usage("u1").await.unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 0.01;
    assert!(close(u.gpu_task_secs, 30.0) && close(u.cpu_task_secs, 12.5), "{u:?}");
    assert!(close(u.gpu_runner_secs, 100.0) && close(u.cpu_runner_secs, 40.0), "the Job row is not counted: {u:?}");
    db.set_price("gpu", 3.6).await.unwrap();
    db.set_price("cpu", 0.36).await.unwrap();
    assert!(close(u.estimated_cost_usd(&db.prices().await.unwrap()), 0.1 + 0.004), "{u:?}");
    let by = db.usage_by_requester(chrono::Utc::now() - chrono::Duration::hours(1)).await.unwrap();
    assert_eq!(by.iter().map(|r| (r.owner.as_str(), r.proofs)).collect::<Vec<_>>(), vec![("alice", 1), ("bob", 1)]);
    assert_eq!(by[1].usage, proofjobs_pipeline::state::Usage::default(), "bob's proof has not run");
    db.close().await;
}

/// Real execute proofs of two requesters: `proofctl admin usage` shows per-requester figures that
/// are the sums of their proofs' figures as `Get` reports them.
#[tokio::test(flavor = "multi_thread")]
async fn per_requester_usage_adds_up_to_the_proofs() {
    init_tracing();
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let mut ids = Vec::new();
    for (requester, count) in [("alice", 2), ("bob", 1)] {
        let key = cluster.create_key(requester, false).await;
        let mut client = cluster.client_with_key(Some(&key)).await;
        for _ in 0..count {
            let messages = submit_messages("execute", FIBONACCI_ELF, &fibonacci_stdin(fibonacci_n_for_cycles(2_000_000)), 0, 0);
            let id = client.submit(futures::stream::iter(messages)).await.unwrap().into_inner().proof_id;
            let done = wait_finished(&mut client, &id, Duration::from_secs(180)).await.unwrap();
            assert_eq!(done.status, "completed", "{}", done.failure_cause);
            ids.push((requester, id));
        }
    }
    // Runner-seconds are final once every runner has exited (they idle a few seconds first).
    let db = cluster.db.db().await;
    let started = Instant::now();
    while !db.live_runners("local").await.unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "runners did not exit");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    db.close().await;
    let url = cluster.db.url.clone();
    proofctl(&["admin", "prices", "--cpu-usd-per-hour", "0.36", "--gpu-usd-per-hour", "3.6", "--database-url", &url]);
    let table = proofctl(&["admin", "usage", "--since", "1h", "--database-url", &url]);
    eprintln!("{table}");
    let mut admin = cluster.client().await;
    for requester in ["alice", "bob"] {
        let mut sum = [0.0f64; 5];
        for (_, id) in ids.iter().filter(|(r, _)| *r == requester) {
            let u = admin.get(GetRequest { proof_id: id.clone() }).await.unwrap().into_inner().usage.unwrap();
            assert!(u.cpu_task_secs > 0.0 && u.cpu_runner_secs >= u.cpu_task_secs, "{id}: {u:?}");
            assert_eq!((u.gpu_task_secs, u.gpu_runner_secs), (0.0, 0.0), "local runners are CPU runners");
            assert!((u.estimated_cost_usd - u.cpu_runner_secs * 0.36 / 3600.0).abs() < 1e-9, "{u:?}");
            for (s, v) in sum.iter_mut().zip([u.cpu_task_secs, u.gpu_task_secs, u.cpu_runner_secs, u.gpu_runner_secs, u.estimated_cost_usd])
            {
                *s += v;
            }
        }
        let row = usage_row(&table, requester);
        let proofs = ids.iter().filter(|(r, _)| *r == requester).count() as f64;
        assert_eq!(row[0], proofs, "{table}");
        for (i, (shown, summed)) in row[1..].iter().zip(sum).enumerate() {
            // The table rounds to 0.1 s and $0.0001.
            let tolerance = if i == 4 { 0.0001 } else { 0.06 };
            assert!((shown - summed).abs() <= tolerance, "{requester} column {i}: table {shown}, proofs {summed}\n{table}");
        }
    }
    cluster.shutdown().await;
}
