//! The api and dispatcher against real PostgreSQL and Redis, without proving: execute mode, bad
//! input, cancellation, SNARK modes without circuits, and the runner's exit-code contract.

use std::time::{Duration, Instant};

use proofjobs_api::proto::{submit_request::Part, CancelRequest, GetProofRequest, GetRequest, ListRequest};
use proofjobs_tests::*;
use sp1_prover_types::cluster::ProofRequestCreateRequest;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn execute_mode_reports_the_same_cycles_as_sp1_sdk() {
    init_tracing();
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let n = fibonacci_n_for_cycles(300_000);
    let id = submit(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(n), 0).await.unwrap();
    let mut client = cluster.client().await;
    let proof = wait_finished(&mut client, &id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, cluster.runner_logs());

    use sp1_sdk::Prover;
    let sdk = sp1_sdk::ProverClient::builder().light().build().await;
    let mut stdin = sp1_sdk::SP1Stdin::new();
    stdin.write(&n);
    let (public_values, report) = sdk.execute(FIBONACCI_ELF.to_vec().into(), stdin).await.unwrap();
    assert_eq!(proof.cycles, report.total_instruction_count(), "cycle count differs from sp1-sdk's execute");
    assert_eq!(proof.public_values, public_values.to_vec());
    assert_eq!(proof.public_values, proofjobs_guests::fibonacci_public_values(n));
    // Execute-only requests have no proof to download, and say so.
    let err = client.get_proof(GetProofRequest { proof_id: id.clone(), accept_url: false }).await.expect_err("no proof for execute mode");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    // Only the execute stage ran.
    assert_eq!(proof.stages.len(), 1);
    assert_eq!(proof.stages[0].stage, "execute");
    assert_eq!((proof.stages[0].done, proof.stages[0].total), (1, 1));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_precise_status_and_harms_nothing() {
    init_tracing();
    let cluster = Cluster::start(None, &[("PROOFJOBS_MAX_STDIN_BYTES", "4096".to_string())]).await.unwrap();
    let good_stdin = fibonacci_stdin(1000);

    let cases: Vec<(&str, Result<String, tonic::Status>, Code, &str)> = vec![
        (
            "garbage ELF",
            submit(&cluster, "core", b"\x7fELF this is not a program", &good_stdin, 0).await,
            Code::InvalidArgument,
            "not a valid SP1 RISC-V ELF",
        ),
        ("empty program", submit(&cluster, "core", b"", &good_stdin, 0).await, Code::InvalidArgument, "program is empty"),
        (
            "stdin over the limit",
            submit(&cluster, "core", FIBONACCI_ELF, &vec![0u8; 5000], 0).await,
            Code::ResourceExhausted,
            "over this server's limit of 4096",
        ),
        (
            "undecodable stdin",
            submit(&cluster, "core", FIBONACCI_ELF, &[1, 2, 3], 0).await,
            Code::InvalidArgument,
            "not a bincode-serialized SP1Stdin",
        ),
        ("unknown mode", submit(&cluster, "turbo", FIBONACCI_ELF, &good_stdin, 0).await, Code::InvalidArgument, "unknown mode \"turbo\""),
        (
            "deadline already past",
            submit(&cluster, "core", FIBONACCI_ELF, &good_stdin, now() - 10).await,
            Code::InvalidArgument,
            "already past",
        ),
    ];
    for (what, result, code, needle) in cases {
        let status = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(needle), "{what}: message {:?} lacks {needle:?}", status.message());
    }

    let mut client = cluster.client().await;
    let err = client.cancel(CancelRequest { proof_id: "no-such-proof".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("no-such-proof"));
    let err = client.get(GetRequest { proof_id: "no-such-proof".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // sp1-cluster's API: artifacts that are not in the store, and an unknown mode.
    let mut cluster_client = cluster.cluster_client(None).await;
    let missing = ProofRequestCreateRequest {
        proof_id: format!("cli_missing_{}", now()),
        program_artifact_id: "artifact_does_not_exist".into(),
        stdin_artifact_id: "artifact_does_not_exist_either".into(),
        options_artifact_id: Some("1".into()),
        deadline: now() + 600,
        ..Default::default()
    };
    let err = cluster_client.proof_request_create(missing.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("artifact_does_not_exist"), "{err}");
    let err = cluster_client
        .proof_request_create(ProofRequestCreateRequest { options_artifact_id: Some("9".into()), ..missing })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Nothing was stored for any of them, and a good request still goes through.
    let listed = client.list(ListRequest::default()).await.unwrap().into_inner().proofs;
    assert!(listed.is_empty(), "bad requests left proofs behind: {listed:?}");
    let id = submit(&cluster, "execute", FIBONACCI_ELF, &good_stdin, 0).await.unwrap();
    let proof = wait_finished(&mut client, &id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}", proof.failure_cause);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_fails_fails_its_proof_with_the_cause() {
    init_tracing();
    let cluster = Cluster::start(None, &[]).await.unwrap();
    // The Fibonacci guest halts with exit code 3 when stdin has no item.
    let empty_stdin = bincode::serialize(&sp1_sdk::SP1Stdin::new()).unwrap();
    let id = submit(&cluster, "execute", FIBONACCI_ELF, &empty_stdin, 0).await.unwrap();
    let mut client = cluster.client().await;
    let proof = wait_finished(&mut client, &id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(proof.status, "failed");
    assert!(proof.failure_cause.contains("exit code 3"), "{}", proof.failure_cause);
    // A program that runs past the request's cycle limit.
    let n = fibonacci_n_for_cycles(200_000);
    let id = submit_limited(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(n), 0, 50_000).await.unwrap();
    let proof = wait_finished(&mut client, &id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(proof.status, "failed");
    assert!(proof.failure_cause.to_lowercase().contains("cycle"), "{}", proof.failure_cause);
    eprintln!("cycle limit: {}", proof.failure_cause);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_mid_proof_leaves_no_runner_behind() {
    init_tracing();
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let id = submit(&cluster, "core", FIBONACCI_ELF, &fibonacci_stdin(fibonacci_n_for_cycles(100_000)), 0).await.unwrap();
    // Wait for the runner process to be up and working.
    let started = Instant::now();
    let pids = loop {
        let pids = cluster.live_runner_pids().await;
        if !pids.is_empty() {
            break pids;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no runner started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut client = cluster.client().await;
    client.cancel(CancelRequest { proof_id: id.clone() }).await.unwrap();
    let proof = client.get(GetRequest { proof_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(proof.status, "cancelled");
    let cancelled_at = Instant::now();
    while pids.iter().any(|pid| pid_alive(*pid)) {
        assert!(cancelled_at.elapsed() < Duration::from_secs(20), "runner {pids:?} still alive 20 s after cancel");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("runner gone {:.1} s after cancel", cancelled_at.elapsed().as_secs_f64());
    // A second cancel is refused precisely; the proof stays cancelled.
    let err = client.cancel(CancelRequest { proof_id: id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn snark_modes_without_circuits_fail_fast_with_an_operator_hint() {
    init_tracing();
    // Circuits are never downloaded; point the runners at a directory that does not have them.
    std::env::set_var("SP1_PLONK_CIRCUIT_PATH", "/nonexistent/proofjobs-test-circuits/plonk");
    std::env::set_var("SP1_GROTH16_CIRCUIT_PATH", "/nonexistent/proofjobs-test-circuits/groth16");
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let mut client = cluster.client().await;
    for (mode, var) in [("plonk", "SP1_PLONK_CIRCUIT_PATH"), ("groth16", "SP1_GROTH16_CIRCUIT_PATH")] {
        let id = submit(&cluster, mode, FIBONACCI_ELF, &fibonacci_stdin(100), 0).await.unwrap();
        let started = Instant::now();
        let proof = wait_finished(&mut client, &id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(proof.status, "failed", "{mode}");
        assert!(proof.failure_cause.contains("circuit artifacts"), "{mode}: {}", proof.failure_cause);
        assert!(proof.failure_cause.contains(var), "{mode}: {}", proof.failure_cause);
        assert!(proof.failure_cause.contains("/nonexistent/proofjobs-test-circuits"), "{mode}: {}", proof.failure_cause);
        eprintln!("{mode} failed after {:.1} s: {}", started.elapsed().as_secs_f64(), proof.failure_cause);
    }
    cluster.shutdown().await;
}

#[test]
fn task_runner_exit_codes_follow_the_contract() {
    let runner = bin("task-runner");
    // Usage error: an unknown stage.
    let out = std::process::Command::new(&runner)
        .args(["--proof", "p", "--stages", "gpu", "--database-url", "postgres://x@127.0.0.1:1/x", "--artifact-store", "file:///tmp/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    // Transient: the state store is unreachable.
    let out = std::process::Command::new(&runner)
        .args([
            "--proof",
            "p",
            "--stages",
            "execute",
            "--database-url",
            "postgres://x@127.0.0.1:1/x",
            "--artifact-store",
            "file:///tmp/proofjobs-exit-test",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_stdin_uploaded_by_a_cluster_client_fails_the_proof_with_exit_65() {
    init_tracing();
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let proof_id = format!("cli_badstdin_{}", uuid::Uuid::now_v7().simple());
    create_proof_with_undecodable_stdin(&cluster, &proof_id).await;
    let mut prover = cluster.client().await;
    let proof = wait_finished(&mut prover, &proof_id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(proof.status, "failed");
    assert!(proof.failure_cause.contains("stdin is not a bincode-serialized SP1Stdin"), "{}", proof.failure_cause);
    let db = cluster.db.db().await;
    let codes: Vec<Option<i32>> =
        sqlx::query_scalar("SELECT exit_code FROM runners WHERE proof_id = $1").bind(&proof_id).fetch_all(db.pool()).await.unwrap();
    assert_eq!(codes, vec![Some(65)], "one runner, exit 65, no retry");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_idempotency_key_returns_the_first_proof() {
    init_tracing();
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let mut client = cluster.client().await;
    let key = format!("key-{}", uuid::Uuid::now_v7().simple());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut messages = submit_messages("execute", FIBONACCI_ELF, &fibonacci_stdin(10), 0, 0);
        if let Some(Part::Header(h)) = messages[0].part.as_mut() {
            h.idempotency_key = key.clone();
        }
        let r = client.submit(futures::stream::iter(messages)).await.unwrap().into_inner();
        ids.push((r.proof_id, r.created));
    }
    assert!(ids[0].1, "the first submission creates the proof");
    assert_eq!(ids[1], (ids[0].0.clone(), false), "the second returns the first");
    let listed = client.list(ListRequest::default()).await.unwrap().into_inner().proofs;
    assert_eq!(listed.len(), 1);
    cluster.shutdown().await;
}
