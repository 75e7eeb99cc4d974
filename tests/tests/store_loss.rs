//! Redis restarted without persistence in the middle of a proof (a real redis-server of this
//! test's own, a real core proof): the artifacts the proof still needs are gone, so it must end
//! with a cause that names the lost artifact and the store, and no runner may hang on it.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use proofjobs_api::proto::GetProofRequest;
use proofjobs_tests::*;

/// A redis-server on `port` that keeps nothing on disk, as a cache-style deployment runs it.
fn redis_server(port: u16, dir: &Path, log: &str) -> Proc {
    let args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(Path::new("redis-server"), &args, &[], dir.join(log))
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "redis-server on {port} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_mid_proof_fails_the_proof_naming_the_lost_artifact() {
    init_tracing();
    let _prover = prover_lock().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = redis_server(port, dir.path(), "redis-1.log");
    wait_listening(port).await;
    let store = format!("redis://127.0.0.1:{port}");
    let cluster = Cluster::start(Some(store.clone()), &[]).await.unwrap();
    let mut client = cluster.client().await;
    let id = submit(&cluster, "core", FIBONACCI_ELF, &fibonacci_stdin(fibonacci_n_for_cycles(100_000)), 0).await.unwrap();

    // Restart it once shard proving is under way: everything the controller stored is gone.
    wait_for_shard_proving(&mut client, &id).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _redis = redis_server(port, dir.path(), "redis-2.log");
    wait_listening(port).await;

    let proof = wait_finished(&mut client, &id, Duration::from_secs(600)).await.unwrap();
    let runners = cluster.runner_logs();
    match proof.status.as_str() {
        "failed" => {
            let cause = &proof.failure_cause;
            println!("failure cause: {cause}");
            assert!(
                cause.contains(&format!("is gone from the artifact store {store}")),
                "the cause does not name the store: {cause}\n{runners}"
            );
            assert!(cause.contains("lost: artifact "), "the cause does not name the artifact: {cause}");
            assert!(!cause.contains("bad input") && !cause.contains("could not be read"), "loss reported as bad input: {cause}");
            let status = client.get_proof(GetProofRequest { proof_id: id.clone(), accept_url: false }).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
            assert!(status.message().contains("is gone from the artifact store"), "{status:?}");
        }
        // Recomputed around the loss: then it must be a proof the stock verifier accepts.
        "completed" => {
            let path = cluster.dir.path().join("after-restart.proof");
            download_and_verify(&mut client, &id, &path).await;
        }
        other => panic!("proof {id} ended {other}: {}\n{runners}", proof.failure_cause),
    }

    // Nothing hangs: every runner of the proof is gone shortly after it ended.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let live = cluster.live_runner_pids().await;
        if live.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "runners {live:?} still alive 90 s after the proof ended\n{}", cluster.runner_logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.shutdown().await;
}
