//! Real SP1 proofs through the whole pipeline, verified with the stock sp1-sdk verifier. Each
//! test holds the prover lock: one SP1 prover at a time.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use proofjobs_api::proto::{submit_request::Part, GetProofRequest, GetRequest, SubmitHeader, SubmitRequest, WatchRequest};
use proofjobs_tests::*;
use sp1_prover_types::cluster::{ProofRequestCreateRequest, ProofRequestGetRequest, ProofRequestStatus};

const PROOF_TIMEOUT: Duration = Duration::from_secs(1200);

fn write_inputs(dir: &Path, n: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let elf = dir.join("fibonacci.elf");
    std::fs::write(&elf, FIBONACCI_ELF).unwrap();
    let stdin = dir.join("stdin.bin");
    std::fs::write(&stdin, fibonacci_stdin(n)).unwrap();
    (elf, stdin)
}

/// `proofctl prove --keep` with no --api; returns the proof file and the runner logs.
fn prove_embedded(elf: &Path, stdin: &Path, mode: &str, out: &Path, key_cache: &str) -> String {
    let started = Instant::now();
    let result = std::process::Command::new(bin("proofctl"))
        .args(["prove", "--keep", "--elf"])
        .arg(elf)
        .arg("--stdin")
        .arg(stdin)
        .args(["--mode", mode, "--quiet", "--out"])
        .arg(out)
        .env("PROOFJOBS_KEY_CACHE", key_cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr).to_string();
    assert!(result.status.success(), "proofctl prove --mode {mode} failed:\n{}\n{stderr}", String::from_utf8_lossy(&result.stdout),);
    eprintln!("embedded {mode} proof (key cache {key_cache}) in {:.0} s", started.elapsed().as_secs_f64());
    let kept = stderr.lines().find_map(|l| l.strip_prefix("embedded: state kept in ")).expect("--keep names the state dir");
    let kept = Path::new(kept.trim());
    let logs = std::fs::read_dir(kept.join("logs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::remove_dir_all(kept).unwrap();
    logs
}

/// An embedded run shuts down in order (dispatcher and api, runners, the notification listener,
/// the pool, then PostgreSQL): it prints no warning and no error, even at the end. Execute mode:
/// nothing to prove, only the start-up and shutdown paths.
#[tokio::test(flavor = "multi_thread")]
async fn an_embedded_run_ends_without_a_warning() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (elf, stdin) = write_inputs(dir.path(), 1000);
    let result = std::process::Command::new(bin("proofctl"))
        .args(["prove", "--mode", "execute", "--quiet", "--elf"])
        .arg(&elf)
        .arg("--stdin")
        .arg(&stdin)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let noisy: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    assert!(noisy.is_empty(), "the embedded run printed:\n{}", noisy.join("\n"));
}

/// `proofctl bench execute` runs the light-client baseline and embedded mode as fresh processes
/// and refuses to print a table when they did not run the program to the same cycle count.
#[tokio::test(flavor = "multi_thread")]
async fn the_execute_bench_compares_embedded_mode_with_the_light_client() {
    init_tracing();
    let result = std::process::Command::new(bin("proofctl"))
        .args(["bench", "execute", "--fibonacci-mcycles", "2", "--runs", "1"])
        .env_remove("PROOFJOBS_API")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&result.stderr));
    println!("{stdout}");
    let ratio = stdout
        .lines()
        .find(|l| l.starts_with("| proofjobs embedded |"))
        .and_then(|l| l.split('|').nth(5)?.trim().strip_suffix('x')?.parse::<f64>().ok())
        .expect("an embedded row with a ratio");
    assert!(ratio > 0.0, "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("| sp1-sdk light client |")), "{stdout}");
}

/// The README's main job: `proofctl prove` with no --api, for core and compressed proofs. The
/// compressed proof is made twice, with the recursion keys loaded from the key cache and with the
/// cache off (every key computed, as SP1 does): both verify with the stock verifier and carry the
/// same recursion verifying key and public values.
#[tokio::test(flavor = "multi_thread")]
async fn embedded_proofs_verify_with_sp1_sdk_with_and_without_the_key_cache() {
    init_tracing();
    let _prover = prover_lock().await;
    let key_cache = warm_key_cache().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let n = fibonacci_n_for_cycles(100_000);
    let (elf, stdin) = write_inputs(dir.path(), n);
    let mut compressed = Vec::new();
    for (mode, cache) in [("core", key_cache.as_str()), ("compressed", key_cache.as_str()), ("compressed", "off")] {
        let out = dir.path().join(format!("{mode}-{}.proof", if cache == "off" { "no-cache" } else { "cache" }));
        let logs = prove_embedded(&elf, &stdin, mode, &out, cache);
        let ready = logs.lines().find(|l| l.contains("SP1 worker ready")).unwrap_or_else(|| panic!("no worker was built:\n{logs}"));
        if cache == "off" {
            assert!(ready.contains("hits=0") && ready.contains("misses=0"), "the cache was used while off: {ready}");
        } else {
            // All six recursion keys (compose 1-4, deferred, shrink) came from the warm cache.
            assert!(ready.contains("hits=6") && ready.contains("misses=0") && ready.contains("rejected=0"), "{ready}");
        }
        let proof = verify_strictly(FIBONACCI_ELF, MEMTRAFFIC_ELF, &out).await.unwrap();
        assert_eq!(proof.public_values.to_vec(), proofjobs_guests::fibonacci_public_values(n));
        let expected = if mode == "core" { "Core" } else { "Compressed" };
        assert!(
            format!("{:?}", proof.proof).starts_with(expected),
            "{mode} proof is {}",
            format!("{:?}", proof.proof).chars().take(20).collect::<String>()
        );
        if let sp1_sdk::SP1Proof::Compressed(inner) = proof.proof {
            compressed.push((inner.vk.clone(), proof.public_values.to_vec()));
        }
    }
    let [(cached_vk, cached_pv), (plain_vk, plain_pv)] = <[_; 2]>::try_from(compressed).unwrap();
    assert!(cached_vk == plain_vk, "the cached and the computed keys gave different recursion verifying keys");
    assert_eq!(cached_pv, plain_pv);
}

/// One-machine cluster over gRPC; the dispatcher is killed mid-proof and restarted. The proof
/// completes, finished stages are not redone, no twin runner is started, and Watch reported every
/// stage starting and finishing.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_proof_survives_a_dispatcher_restart() {
    init_tracing();
    let _prover = prover_lock().await;
    let mut cluster = Cluster::start(None, &[]).await.unwrap();
    let n = fibonacci_n_for_cycles(100_000);
    let stdin = fibonacci_stdin(n);
    let mut client = cluster.client().await;
    let messages = vec![
        SubmitRequest {
            part: Some(Part::Header(SubmitHeader {
                mode: "core".into(),
                program_size: FIBONACCI_ELF.len() as u64,
                stdin_size: stdin.len() as u64,
                ..Default::default()
            })),
        },
        SubmitRequest { part: Some(Part::ProgramChunk(FIBONACCI_ELF.to_vec())) },
        SubmitRequest { part: Some(Part::StdinChunk(stdin)) },
    ];
    let id = client.submit(futures::stream::iter(messages)).await.unwrap().into_inner().proof_id;

    // Collect every Watch update in the background.
    let mut watch = cluster.client().await.watch(WatchRequest { proof_id: id.clone() }).await.unwrap().into_inner();
    let updates = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(update)) = watch.message().await {
            all.push(update);
        }
        all
    });

    // Wait for setup to finish and shard proving to start, then kill the dispatcher.
    let started = Instant::now();
    loop {
        let p = client.get(GetRequest { proof_id: id.clone() }).await.unwrap().into_inner();
        let stage = |name: &str| p.stages.iter().find(|s| s.stage == name).cloned().unwrap();
        if stage("setup").state == "done" && stage("prove-core").total > 0 {
            break;
        }
        assert_ne!(p.status, "failed", "{}", p.failure_cause);
        assert!(started.elapsed() < PROOF_TIMEOUT, "setup never finished:\n{}", cluster.runner_logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let runners_before = cluster.live_runner_pids().await;
    cluster.kill_dispatcher();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cluster.live_runner_pids().await, runners_before, "runners keep working while the dispatcher is down");
    cluster.start_dispatcher();

    let proof = wait_finished(&mut client, &id, PROOF_TIMEOUT).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, cluster.runner_logs());
    let setup = proof.stages.iter().find(|s| s.stage == "setup").unwrap();
    assert_eq!((setup.done, setup.total), (1, 1), "setup was redone");
    let db = cluster.db.db().await;
    let runners: i64 = sqlx::query_scalar("SELECT count(*) FROM runners WHERE proof_id = $1").bind(&id).fetch_one(db.pool()).await.unwrap();
    assert_eq!(runners, 1, "a twin runner was started after the restart");

    let updates = updates.await.unwrap();
    for stage in ["execute", "setup", "prove-core"] {
        let states: Vec<&str> =
            updates.iter().filter_map(|u| u.stages.iter().find(|s| s.stage == stage)).map(|s| s.state.as_str()).collect();
        assert!(states.contains(&"running"), "Watch never showed {stage} running: {states:?}");
        assert_eq!(states.last(), Some(&"done"), "Watch never showed {stage} done: {states:?}");
    }
    assert_eq!(updates.last().unwrap().status, "completed");

    let path = cluster.dir.path().join("grpc.proof");
    download_and_verify(&mut client, &id, &path).await;
    cluster.shutdown().await;
}

/// An sp1-cluster client, unchanged: uploads program and stdin to Redis in sp1-cluster's layout,
/// calls ProofRequestCreate, polls ProofRequestGet, reads the proof from Redis.
#[tokio::test(flavor = "multi_thread")]
async fn sp1_cluster_client_gets_a_verifying_proof() {
    init_tracing();
    let _prover = prover_lock().await;
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let mut conn = redis_connection().await;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let (program_id, stdin_id, proof_artifact) =
        (format!("artifact_p{suffix}"), format!("artifact_s{suffix}"), format!("artifact_o{suffix}"));
    let n = fibonacci_n_for_cycles(100_000);
    put_like_sp1_cluster(&mut conn, &program_id, &bincode::serialize(&FIBONACCI_ELF.to_vec()).unwrap()).await;
    put_like_sp1_cluster(&mut conn, &stdin_id, &fibonacci_stdin(n)).await;

    let mut client = cluster.cluster_client(None).await;
    let proof_id = format!("cli_{suffix}");
    let deadline = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    client
        .proof_request_create(ProofRequestCreateRequest {
            proof_id: proof_id.clone(),
            program_artifact_id: program_id,
            stdin_artifact_id: stdin_id,
            options_artifact_id: Some("1".into()),
            proof_artifact_id: Some(proof_artifact.clone()),
            deadline,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let request = loop {
        let r = client.proof_request_get(ProofRequestGetRequest { proof_id: proof_id.clone() }).await.unwrap().into_inner();
        let r = r.proof_request.expect("the request exists");
        if r.proof_status != ProofRequestStatus::Pending as i32 {
            break r;
        }
        assert!(started.elapsed() < PROOF_TIMEOUT, "still pending:\n{}", cluster.runner_logs());
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(request.proof_status, ProofRequestStatus::Completed as i32, "{:?}\n{}", request.extra_data, cluster.runner_logs());
    assert!(request.execution_result.unwrap().cycles > 0);

    // Read the proof the way sp1-cluster clients do: plain zstd, then bincode.
    let stored: Vec<u8> = redis::cmd("GET").arg(&proof_artifact).query_async(&mut conn).await.unwrap();
    let proof: sp1_prover::worker::ProofFromNetwork = bincode::deserialize(&zstd::decode_all(stored.as_slice()).unwrap()).unwrap();
    let path = cluster.dir.path().join("cluster.proof");
    sp1_sdk::SP1ProofWithPublicValues {
        proof: proof.proof,
        public_values: proof.public_values,
        sp1_version: proof.sp1_version,
        tee_proof: None,
    }
    .save(&path)
    .unwrap();
    verify_strictly(FIBONACCI_ELF, MEMTRAFFIC_ELF, &path).await.unwrap();
    cluster.shutdown().await;
}

fn proofctl(cluster: &Cluster, key: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(bin("proofctl"))
        .args(args)
        .env("PROOFJOBS_API", &cluster.endpoint)
        .env("PROOFJOBS_API_KEY", key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A quote for a real core proof, learned from one earlier core proof on the same cluster:
/// `proofctl quote` executes the program on the cluster, the proof is submitted with the quote,
/// and `Get` sets the estimate against the actual time and task-seconds. A quote is its owner's
/// and for one mode.
#[tokio::test(flavor = "multi_thread")]
async fn a_quote_estimates_a_core_proof_from_the_clusters_history() {
    init_tracing();
    let _prover = prover_lock().await;
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let mut client = cluster.client().await;
    let dir = cluster.dir.path();
    let elf = dir.join("fibonacci.elf");
    std::fs::write(&elf, FIBONACCI_ELF).unwrap();
    let (history_stdin, quoted_stdin) = (dir.join("history.stdin"), dir.join("quoted.stdin"));
    std::fs::write(&history_stdin, fibonacci_stdin(fibonacci_n_for_cycles(100_000))).unwrap();
    std::fs::write(&quoted_stdin, fibonacci_stdin(fibonacci_n_for_cycles(110_000))).unwrap();
    let (elf_arg, key) = (elf.to_str().unwrap(), cluster.admin_key.clone());
    let quote = |stdin: &Path| proofctl(&cluster, &key, &["quote", "--elf", elf_arg, "--stdin", stdin.to_str().unwrap(), "--mode", "core"]);

    // Before any core proof there is nothing to learn from: cycles only.
    let first = quote(&quoted_stdin).unwrap();
    assert!(first.contains("no completed core proof on this cluster yet"), "{first}");

    // The history: one core proof.
    let history = proofctl(&cluster, &key, &["submit", "--elf", elf_arg, "--stdin", history_stdin.to_str().unwrap(), "--mode", "core"])
        .unwrap()
        .trim()
        .to_string();
    let done = wait_finished(&mut client, &history, PROOF_TIMEOUT).await.unwrap();
    assert_eq!(done.status, "completed", "{}\n{}", done.failure_cause, cluster.runner_logs());

    let printed = quote(&quoted_stdin).unwrap();
    assert!(printed.contains("estimate from 1 completed core proof(s)"), "{printed}");
    let quote_id = printed.split_whitespace().nth(1).unwrap().to_string();
    let db = cluster.db.db().await;
    let stored = db.get_quote(&quote_id).await.unwrap().expect("the quote is stored");
    assert!(stored.cycles > 0 && stored.eta_secs > 0.0 && stored.usage.cpu_task_secs > 0.0, "{stored:?}");

    // Someone else cannot name it, and it is for core proofs only.
    let other = cluster.create_key("someone-else", false).await;
    let submit_with = |key: &str, mode: &str| {
        proofctl(
            &cluster,
            key,
            &["submit", "--elf", elf_arg, "--stdin", quoted_stdin.to_str().unwrap(), "--mode", mode, "--quote", &quote_id],
        )
    };
    let refused = submit_with(&other, "core").unwrap_err();
    assert!(refused.contains("NotFound") && refused.contains("no quote with id"), "{refused}");
    let refused = submit_with(&key, "compressed").unwrap_err();
    assert!(refused.contains("InvalidArgument") && refused.contains("is for a core proof"), "{refused}");

    let id = submit_with(&key, "core").unwrap().trim().to_string();
    let proof = wait_finished(&mut client, &id, PROOF_TIMEOUT).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, cluster.runner_logs());
    assert_eq!(proof.cycles as i64, stored.cycles, "the quote executed the same program and input");
    let check = proof.quote.expect("Get reports the quote");
    let actual = check.actual_usage.unwrap();
    let (eta_error, task_error) = (check.eta_error_pct.unwrap(), check.cpu_task_secs_error_pct.unwrap());
    eprintln!(
        "quote vs actual: time {:.1} s est / {:.1} s actual ({eta_error:+.0}%), CPU tasks {:.1} / {:.1} s ({task_error:+.0}%)",
        stored.eta_secs, check.actual_secs, stored.usage.cpu_task_secs, actual.cpu_task_secs
    );
    // The errors are what the cluster measured; off by more than a factor of two is a broken
    // estimate for a proof 10% longer than the one it learned from.
    assert!((-50.0..100.0).contains(&eta_error), "time estimate off by {eta_error:+.0}%");
    assert!((-50.0..100.0).contains(&task_error), "task-seconds estimate off by {task_error:+.0}%");
    assert_eq!(check.gpu_task_secs_error_pct, None, "no GPU ran here");
    let shown = proofctl(&cluster, &key, &["get", &id]).unwrap();
    assert!(shown.contains(&format!("quote {quote_id}: estimated")) && shown.contains("error: time"), "{shown}");

    let path = dir.join("quoted.proof");
    download_and_verify(&mut client, &id, &path).await;

    // The store loses the proof (Redis restarted without persistence): DATA_LOSS naming it.
    let artifact = db.get_proof(&id).await.unwrap().unwrap().proof_artifact;
    let mut conn = redis_connection().await;
    redis::cmd("DEL").arg(&artifact).arg(format!("{artifact}:chunks")).query_async::<()>(&mut conn).await.unwrap();
    let lost = client.get_proof(GetProofRequest { proof_id: id.clone(), accept_url: false }).await.unwrap_err();
    assert_eq!(lost.code(), tonic::Code::DataLoss, "{lost}");
    assert!(lost.message().contains(&artifact), "{lost}");
    db.close().await;
    cluster.shutdown().await;
}
