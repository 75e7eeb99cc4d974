//! The S3 tier end to end (real Redis, the S3-compatible server scripts/services.sh starts, real
//! PostgreSQL): with a 1 KiB spill threshold every artifact of a proof but the smallest goes to S3
//! behind a pointer in Redis, and a real core proof still completes and verifies.

use std::time::Duration;

use proofjobs_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_core_proof_with_its_artifacts_in_s3_verifies() {
    init_tracing();
    let _prover = prover_lock().await;
    let (store, _) = spill_store_url("spill-e2e", 1024);
    let cluster = Cluster::start(Some(store), &[]).await.unwrap();
    let mut client = cluster.client().await;
    let n = fibonacci_n_for_cycles(100_000);
    let id = submit(&cluster, "core", FIBONACCI_ELF, &fibonacci_stdin(n), 0).await.unwrap();
    let proof = wait_finished(&mut client, &id, Duration::from_secs(1200)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, cluster.runner_logs());

    // The program (over 1 KiB encoded) is a pointer in Redis.
    let db = cluster.db.db().await;
    let row = db.get_proof(&id).await.unwrap().unwrap();
    let mut conn = redis_connection().await;
    let stored: Vec<u8> = redis::cmd("GET").arg(&row.program_artifact).query_async(&mut conn).await.unwrap();
    assert!(stored.starts_with(b"proofjobs-s3:"), "the program is not in S3: {} bytes inline", stored.len());

    let path = cluster.dir.path().join("spilled.proof");
    download_and_verify(&mut client, &id, &path).await;
    db.close().await;
    cluster.shutdown().await;
}

/// S3 goes away while a proof's shards are being proved and comes back 20 s later: runners that
/// hit it hand their work back (exit 75, retried uncounted) and the proof completes and verifies.
#[tokio::test(flavor = "multi_thread")]
async fn s3_lost_mid_proof_is_transient_and_the_proof_completes() {
    init_tracing();
    let _prover = prover_lock().await;
    let services = required_env("PROOFJOBS_SERVICES_DIR");
    let (store, _) = spill_store_url("spill-outage", 1024);
    let cluster = Cluster::start(Some(store), &[]).await.unwrap();
    let mut client = cluster.client().await;
    let id = submit(&cluster, "core", FIBONACCI_ELF, &fibonacci_stdin(fibonacci_n_for_cycles(100_000)), 0).await.unwrap();
    wait_for_shard_proving(&mut client, &id).await;
    let pid = std::fs::read_to_string(format!("{services}/s3s.pid")).unwrap();
    assert!(std::process::Command::new("kill").arg(pid.trim()).status().unwrap().success());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let restarted = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh"))
        .arg("start")
        .output()
        .unwrap();
    assert!(restarted.status.success(), "{}", String::from_utf8_lossy(&restarted.stderr));

    let proof = wait_finished(&mut client, &id, Duration::from_secs(1200)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, cluster.runner_logs());
    let db = cluster.db.db().await;
    let exits: Vec<Option<i32>> =
        sqlx::query_scalar("SELECT exit_code FROM runners WHERE proof_id = $1").bind(&id).fetch_all(db.pool()).await.unwrap();
    let failures: i64 = sqlx::query_scalar("SELECT coalesce(sum(failures), 0)::int8 FROM runner_groups WHERE proof_id = $1")
        .bind(&id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    println!("runner exits during the outage: {exits:?}; counted failures {failures}");
    assert!(exits.contains(&Some(75)), "no runner handed its work back during the outage: {exits:?}");
    assert_eq!(failures, 0, "the outage was counted as runner failures");
    let path = cluster.dir.path().join("outage.proof");
    download_and_verify(&mut client, &id, &path).await;
    db.close().await;
    cluster.shutdown().await;
}
