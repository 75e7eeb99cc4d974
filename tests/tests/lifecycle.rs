//! Nothing left behind, on real Redis, S3 (s3s-fs) and PostgreSQL: after twenty proofs that
//! completed, failed or were cancelled (one mid-proof, with shards in the store), the dispatcher's
//! sweep has deleted every intermediate artifact from both stores (every value over 1 KiB is
//! spilled to S3 here), every remaining artifact of theirs expires, and the row retention purges
//! their rows in batches (task messages and claims too).

use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use proofjobs_api::proto::{CancelRequest, GetRequest};
use proofjobs_pipeline::{
    artifacts::{s3::S3Tier, split_spill},
    state::{Db, RequesterRow},
};
use proofjobs_tests::*;

/// Artifact ids with an object under the tier's prefix (a listing of the bucket).
async fn objects_in(tier: &S3Tier, bucket: &str, prefix: &str) -> BTreeSet<String> {
    let mut pages = tier.sdk_client().list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
    let mut ids = BTreeSet::new();
    while let Some(page) = pages.next().await {
        for object in page.unwrap().contents() {
            ids.insert(object.key().unwrap_or_default().trim_start_matches(prefix).to_string());
        }
    }
    ids
}

/// Artifact ids of a proof as the state names them: (program, stdin, output), intermediates.
async fn artifacts_of(db: &Db, id: &str) -> ((String, String, String), Vec<String>) {
    let row = db.get_proof(id).await.unwrap().unwrap();
    let intermediates: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT a FROM tasks, unnest(inputs || outputs) AS a WHERE proof_id = $1 AND a <> ALL($2)")
            .bind(id)
            .bind([&row.program_artifact, &row.stdin_artifact, &row.proof_artifact])
            .fetch_all(db.pool())
            .await
            .unwrap();
    ((row.program_artifact, row.stdin_artifact, row.proof_artifact), intermediates)
}

/// Keys of an artifact that exist in Redis (the plain value and the chunk hash), with their PTTL.
async fn keys_of(conn: &mut redis::aio::MultiplexedConnection, id: &str) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    for key in [id.to_string(), format!("{id}:chunks")] {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(conn).await.unwrap();
        if ttl != -2 {
            found.push((key, ttl));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_ended_proofs_leave_no_intermediates_and_expire_then_purge() {
    init_tracing();
    let _prover = prover_lock().await;
    let sweep = vec![
        ("PROOFJOBS_SWEEP_SECS", "1".to_string()),
        ("PROOFJOBS_INPUT_RETENTION_SECS", "3600".to_string()),
        ("PROOFJOBS_PROOF_RETENTION_SECS", "7200".to_string()),
    ];
    let (store, prefix) = spill_store_url("lifecycle", 1024);
    let (_, Some((s3_config, _))) = split_spill(&store).unwrap() else { panic!("no S3 tier in {store}") };
    let tier = S3Tier::connect(s3_config.clone()).await.unwrap();
    tier.ensure_bucket().await.unwrap();
    let mut cluster = Cluster::start_with(Some(store), &[], sweep.clone()).await.unwrap();
    let db = cluster.db.db().await;
    // Four proofs at a time (the quota queues the rest), so twenty fit this machine.
    db.set_requester(&RequesterRow { name: "*".into(), max_in_flight: Some(4), ..Default::default() }, &[]).await.unwrap();
    let mut conn = redis_connection().await;
    let mut client = cluster.client().await;

    // One core proof cancelled while it proves shards: its intermediates are in Redis then.
    let n = fibonacci_n_for_cycles(100_000);
    let midway = submit(&cluster, "core", FIBONACCI_ELF, &fibonacci_stdin(n), 0).await.unwrap();
    let started = Instant::now();
    let stored_before = loop {
        let (_, intermediates) = artifacts_of(&db, &midway).await;
        let mut stored = 0;
        for id in &intermediates {
            stored += keys_of(&mut conn, id).await.len();
        }
        let p = client.get(GetRequest { proof_id: midway.clone() }).await.unwrap().into_inner();
        if stored > 0 && p.stages.iter().any(|s| s.stage == "prove-core" && s.done > 0) {
            break stored;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "no shard was stored:\n{}", cluster.runner_logs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let (_, midway_intermediates) = artifacts_of(&db, &midway).await;
    let spilled_before =
        objects_in(&tier, &s3_config.bucket, &prefix).await.into_iter().filter(|o| midway_intermediates.contains(o)).count();
    client.cancel(CancelRequest { proof_id: midway.clone() }).await.unwrap();

    let mut ids = vec![midway.clone()];
    for i in 0..13 {
        ids.push(submit(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(1000 + i), 0).await.unwrap());
    }
    for i in 0..3 {
        let id = format!("lifecycle_bad_{i}_{}", uuid::Uuid::now_v7().simple());
        create_proof_with_undecodable_stdin(&cluster, &id).await;
        ids.push(id);
    }
    for _ in 0..3 {
        let id = submit(&cluster, "core", FIBONACCI_ELF, &fibonacci_stdin(n), 0).await.unwrap();
        client.cancel(CancelRequest { proof_id: id.clone() }).await.unwrap();
        ids.push(id);
    }
    assert_eq!(ids.len(), 20);

    // Every proof ends and is swept.
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for id in &ids {
        let p = wait_finished(&mut client, id, Duration::from_secs(600)).await.unwrap();
        *statuses.entry(p.status).or_default() += 1;
    }
    assert_eq!(statuses.get("completed"), Some(&13), "{statuses:?}");
    assert_eq!(statuses.get("failed"), Some(&3), "{statuses:?}");
    assert_eq!(statuses.get("cancelled"), Some(&4), "{statuses:?}");
    let swept = Instant::now();
    loop {
        let unswept: i64 = sqlx::query_scalar("SELECT count(*) FROM proofs WHERE id = ANY($1) AND swept_at IS NULL")
            .bind(&ids)
            .fetch_one(db.pool())
            .await
            .unwrap();
        if unswept == 0 {
            break;
        }
        assert!(swept.elapsed() < Duration::from_secs(120), "{unswept} proofs were never swept");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // No intermediate is left; whatever else of theirs remains expires.
    let (mut intermediates, mut kept) = (0, 0);
    for id in &ids {
        let ((program, stdin, output), between) = artifacts_of(&db, id).await;
        intermediates += between.len();
        for artifact in &between {
            assert!(keys_of(&mut conn, artifact).await.is_empty(), "proof {id}: intermediate {artifact} left behind");
        }
        for artifact in [&program, &stdin, &output] {
            for (key, ttl) in keys_of(&mut conn, artifact).await {
                assert!(ttl > 0, "proof {id}: {key} never expires (PTTL {ttl})");
                kept += 1;
            }
        }
    }
    // The bucket holds nothing but their inputs and outputs.
    let mut inputs_and_outputs = BTreeSet::new();
    for id in &ids {
        let ((program, stdin, output), _) = artifacts_of(&db, id).await;
        inputs_and_outputs.extend([program, stdin, output]);
    }
    let objects = objects_in(&tier, &s3_config.bucket, &prefix).await;
    let strays: Vec<&String> = objects.difference(&inputs_and_outputs).collect();
    assert!(strays.is_empty(), "objects left in s3://{}/{prefix} that are no proof's input or output: {strays:?}", s3_config.bucket);
    println!(
        "{intermediates} intermediates deleted ({stored_before} Redis keys, {spilled_before} S3 objects of the cancelled core proof); \
         {kept} input and output keys expire; {} objects left in S3, all inputs or outputs",
        objects.len()
    );
    assert!(intermediates > 0 && kept > 0);
    assert!(spilled_before > 0, "no intermediate of the cancelled proof was in S3: the test did not exercise the S3 sweep");
    assert!(!objects.is_empty(), "no program was in S3: the kept objects were not checked");

    // Rows: a dispatcher with a one-second row retention purges them, messages and claims too.
    cluster.kill_dispatcher();
    cluster.dispatcher_env.push(("PROOFJOBS_ROW_RETENTION_SECS", "1".into()));
    cluster.start_dispatcher();
    let purging = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM proofs WHERE id = ANY($1)").bind(&ids).fetch_one(db.pool()).await.unwrap();
        if left == 0 {
            break;
        }
        assert!(purging.elapsed() < Duration::from_secs(60), "{left} proofs' rows were not purged");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for table in ["tasks", "task_messages", "runners"] {
        let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE proof_id = ANY($1)"))
            .bind(&ids)
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(left, 0, "{table} rows of purged proofs");
    }
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM artifact_claims").fetch_one(db.pool()).await.unwrap();
    assert_eq!(claims, 0, "claims of purged proofs' artifacts");
    let gone = client.get(GetRequest { proof_id: ids[1].clone() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    db.close().await;
    cluster.shutdown().await;
}
