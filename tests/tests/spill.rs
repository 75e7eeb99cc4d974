//! The S3 tier end to end (real Redis, the S3-compatible server scripts/services.sh starts, real
//! PostgreSQL): with a 1 KiB spill threshold every artifact of a proof but the smallest goes to S3
//! behind a pointer in Redis, and a real core proof still completes and verifies.

use std::time::Duration;

use proofjobs_api::proto::GetProofRequest;
use proofjobs_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_core_proof_with_its_artifacts_in_s3_verifies() {
    init_tracing();
    let _prover = prover_lock().await;
    let endpoint = required_env("PROOFJOBS_S3_ENDPOINT");
    let prefix = format!("spill-e2e-{}/", uuid::Uuid::now_v7().simple());
    let store = format!(
        "{}/?spill=s3://proofjobs-live-tests/{prefix}&spill_endpoint={endpoint}&spill_threshold=1024&spill_path_style=true",
        redis_url()
    );
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

    let mut stream = client.get_proof(GetProofRequest { proof_id: id.clone() }).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    let path = cluster.dir.path().join("spilled.proof");
    std::fs::write(&path, bytes).unwrap();
    verify_strictly(FIBONACCI_ELF, MEMTRAFFIC_ELF, &path).await.unwrap();
    db.close().await;
    cluster.shutdown().await;
}
