//! The S3 tier end to end (real Redis, the S3-compatible server scripts/services.sh starts, real
//! PostgreSQL), on one real core proof: with a 1 KiB spill threshold every artifact of the proof
//! but the smallest goes to S3 behind a pointer in Redis; S3 goes away while its shards are being
//! proved and comes back; the proof completes, verifies, and is offered as a presigned download
//! URL that S3 refuses once it is changed or has expired.

use std::time::Duration;

use proofjobs_api::{
    auth::ProverClient,
    proto::{GetProofRequest, ProofChunk},
};
use proofjobs_tests::*;

/// How long the api's download URLs stay valid in this test.
const URL_TTL_SECS: u64 = 10;

#[tokio::test(flavor = "multi_thread")]
async fn a_proof_in_s3_survives_an_s3_outage_and_downloads_from_a_presigned_url() {
    init_tracing();
    let _prover = prover_lock().await;
    let services = required_env("PROOFJOBS_SERVICES_DIR");
    let (store, prefix) = spill_store_url("spill-outage", 1024);
    let api_env = [("PROOFJOBS_PROOF_URL_THRESHOLD", "1024".to_string()), ("PROOFJOBS_PROOF_URL_TTL_SECS", URL_TTL_SECS.to_string())];
    let cluster = Cluster::start(Some(store), &api_env).await.unwrap();
    let mut client = cluster.client().await;
    let id = submit(&cluster, "core", FIBONACCI_ELF, &fibonacci_stdin(fibonacci_n_for_cycles(100_000)), 0).await.unwrap();

    // S3 goes away while a shard is being proved and comes back 20 s later: runners that hit it
    // hand their work back (exit 75, retried uncounted).
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

    // The program (over 1 KiB encoded) is a pointer in Redis.
    let row = db.get_proof(&id).await.unwrap().unwrap();
    let mut conn = redis_connection().await;
    let stored: Vec<u8> = redis::cmd("GET").arg(&row.program_artifact).query_async(&mut conn).await.unwrap();
    assert!(stored.starts_with(b"proofjobs-s3:"), "the program is not in S3: {} bytes inline", stored.len());

    // A client that does not take URLs gets the bytes streamed, and they verify.
    let path = cluster.dir.path().join("streamed.proof");
    download_and_verify(&mut client, &id, &path).await;
    let streamed = std::fs::read(&path).unwrap();

    // One that does gets a URL to exactly those bytes, and then again (from the object written once).
    let offer = url_offer(&mut client, &id).await;
    assert!(offer.data.is_empty() && offer.size == streamed.len() as u64, "size {} of {}", offer.size, streamed.len());
    let object = format!("{prefix}downloads/{id}.bin");
    assert!(offer.download_url.contains(&object) && offer.download_url.contains("X-Amz-Signature="), "{}", offer.download_url);
    let (status, body) = http_get(&offer.download_url).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == streamed, "the download URL served {} bytes that are not the proof", body.len());
    let again = url_offer(&mut client, &id).await;
    assert_eq!(http_get(&again.download_url).await.0, 200);

    // proofctl get --out follows the URL.
    let out = cluster.dir.path().join("proofctl.proof");
    let got = std::process::Command::new(bin("proofctl"))
        .args(["get", &id, "--api", &cluster.endpoint, "--out"])
        .arg(&out)
        .env("PROOFJOBS_API_KEY", &cluster.admin_key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&got.stdout);
    assert!(got.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&got.stderr));
    assert!(stdout.contains("from its download URL"), "{stdout}");
    assert!(std::fs::read(&out).unwrap() == streamed, "proofctl wrote other bytes");

    // The signature covers the object and the expiry: beside a fresh URL that works, the same
    // URL bent to another object (the program's, in the same bucket) or with a changed signature
    // is refused, before it expires (else the refusals would prove nothing)...
    let fresh = url_offer(&mut client, &id).await;
    assert_eq!(http_get(&fresh.download_url).await.0, 200, "the control URL");
    let other = fresh.download_url.replace(&object, &format!("{prefix}{}", row.program_artifact));
    assert_eq!(http_get(&other).await.0, 403, "a URL bent to another object was served");
    let forged = flip_last_signature_digit(&fresh.download_url);
    assert_eq!(http_get(&forged).await.0, 403, "a URL with a changed signature was served");
    assert!(now() < fresh.url_expires_at, "the checks ran past the URL's expiry");
    // ... and so is the URL itself once it has expired.
    let wait = fresh.url_expires_at.saturating_sub(now()) + 2;
    assert!(wait <= URL_TTL_SECS + 2, "the URL expires in {wait} s, past the lifetime set");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, body) = http_get(&fresh.download_url).await;
    assert_eq!(status, 403, "an expired URL was served: {}", String::from_utf8_lossy(&body));

    // Past the proof's retention (its artifact gone), no URL is handed out, though the download
    // object is still in the bucket.
    let _: () = redis::cmd("DEL").arg(&row.proof_artifact).query_async(&mut conn).await.unwrap();
    let lost = client.get_proof(GetProofRequest { proof_id: id.clone(), accept_url: true }).await.unwrap_err();
    assert_eq!(lost.code(), tonic::Code::DataLoss, "{lost}");
    db.close().await;
    cluster.shutdown().await;
}

/// GetProof of a client that takes URLs: exactly one chunk, with a URL.
async fn url_offer(client: &mut ProverClient, id: &str) -> ProofChunk {
    let mut stream = client.get_proof(GetProofRequest { proof_id: id.to_string(), accept_url: true }).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("GetProof sent nothing");
    assert!(stream.message().await.unwrap().is_none(), "more than one chunk came with the URL");
    assert!(!first.download_url.is_empty(), "no URL offered for a {} byte proof", first.data.len());
    first
}

async fn http_get(url: &str) -> (u16, Vec<u8>) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

fn flip_last_signature_digit(url: &str) -> String {
    let at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len() + 63;
    let mut bytes = url.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).unwrap()
}
