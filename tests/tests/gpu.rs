//! The CUDA task-runner (`scripts/build-cuda.sh`): on a node that cannot take GPU work it exits 69
//! with a message naming what it found, and records why; with a suitable GPU it proves Fibonacci
//! core and compressed through the embedded pipeline, and the stock sp1-sdk verifier accepts both.
//! The proving test needs an NVIDIA GPU: on a machine without one it is reported as ignored, with
//! the reason (`tests/build.rs` decides when the crate is built).

use std::{path::PathBuf, process::Command, time::Duration};

use proofjobs_pipeline::{exit, ids, stage::Stage};
use proofjobs_tests::*;
use sp1_prover_types::TaskType;

fn cuda_runner() -> PathBuf {
    let path = bin_dir().join("task-runner-cuda");
    assert!(path.is_file(), "{} is missing: scripts/build-cuda.sh builds it (scripts/test.sh runs it)", path.display());
    path
}

/// The GPUs the driver shows, as `nvidia-smi -L` lists them, or why there are none.
fn gpu_listing() -> Result<String, String> {
    match Command::new("nvidia-smi").arg("-L").output() {
        Ok(out) if out.status.success() && !out.stdout.is_empty() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Ok(out) => Err(format!("nvidia-smi -L failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(format!("nvidia-smi not found ({e})")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cuda_runner_on_a_node_without_a_suitable_gpu_exits_69_and_records_why() {
    let test_db = TestDb::create().await.unwrap();
    let db = test_db.db().await;
    let proof_id = ids::new_proof_id();
    insert_stage_ready_proof(&db, &proof_id, Stage::ProveCore, TaskType::ProveShard, 1).await.unwrap();
    let store = tempfile::tempdir().unwrap();
    let runner_id = ids::new_runner_id();
    // An impossible memory floor makes even a real GPU unsuitable, so this holds on any machine.
    let out = Command::new(cuda_runner())
        .args(["--proof", &proof_id, "--stages", "prove-core", "--runner-id", &runner_id])
        .env("DATABASE_URL", &test_db.url)
        .env("PROOFJOBS_ARTIFACT_STORE", format!("file://{}", store.path().display()))
        .env("PROOFJOBS_GPU_MIN_FREE_GIB", "100000")
        .env_remove("PROOFJOBS_PROVER")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit::UNSUITABLE_NODE), "{stderr}");
    let reason = db.runner_error(&runner_id).await.unwrap().expect("the runner recorded why it left");
    assert!(stderr.contains(&reason), "the log says what the row says:\n{stderr}\n{reason}");
    match gpu_listing() {
        Err(_) => assert!(reason.starts_with("no usable GPU on this node: the NVIDIA driver library (libcuda.so.1)"), "{reason}"),
        Ok(_) => assert!(reason.contains("100000.0 GiB this stage needs"), "{reason}"),
    }
    // Nothing was claimed: the task waits for a runner on a node that qualifies.
    let next = db.claim_task(&proof_id, &[Stage::ProveCore], "another-runner").await.unwrap();
    assert_eq!(next.expect("task still pending").attempts, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cuda_runner_told_to_prove_on_the_cpu_needs_no_gpu() {
    // PROOFJOBS_PROVER=cpu turns the CUDA build into the CPU runner: the GPU check is skipped, so
    // it claims its stage's task (here an execute-only proof it completes).
    let test_db = TestDb::create().await.unwrap();
    let db = test_db.db().await;
    let proof_id = ids::new_proof_id();
    let store_dir = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", store_dir.path().display());
    let store = proofjobs_pipeline::artifacts::ArtifactStore::connect(&store_url, Default::default()).await.unwrap();
    insert_stage_ready_proof(&db, &proof_id, Stage::Execute, TaskType::ExecuteOnly, 1).await.unwrap();
    let row = db.get_proof(&proof_id).await.unwrap().unwrap();
    use sp1_prover_types::{Artifact, ArtifactClient, ArtifactType};
    store.upload_program(&Artifact(row.program_artifact.clone()), proofjobs_guests::FIBONACCI_ELF.to_vec()).await.unwrap();
    store.upload_raw(&Artifact(row.stdin_artifact.clone()), ArtifactType::Stdin, fibonacci_stdin(1000)).await.unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(cuda_runner())
            .args(["--proof", &proof_id, "--stages", "execute", "--prover", "cpu", "--idle-exit-secs", "1"])
            .env("DATABASE_URL", &test_db.url)
            .env("PROOFJOBS_ARTIFACT_STORE", &store_url)
            .output(),
    )
    .await
    .expect("runner did not exit")
    .unwrap();
    assert_eq!(out.status.code(), Some(exit::DONE), "{}", String::from_utf8_lossy(&out.stderr));
    let row = db.get_proof(&proof_id).await.unwrap().unwrap();
    assert_eq!(row.status.as_str(), "completed", "{:?}", row.failure_cause);
    assert!(row.cycles.unwrap_or(0) > 1000, "{:?}", row.cycles);
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(nvidia_gpu), ignore = "needs an NVIDIA GPU: none was found when this crate was built (tests/build.rs)")]
async fn a_gpu_proves_fibonacci_core_and_compressed_through_the_pipeline() {
    let gpu = gpu_listing().expect("this test runs only where tests/build.rs found an NVIDIA GPU");
    eprintln!("proving on {gpu}");
    let _prover = prover_lock().await;
    let dir = tempfile::tempdir().unwrap();
    let elf = dir.path().join("fibonacci.elf");
    std::fs::write(&elf, proofjobs_guests::FIBONACCI_ELF).unwrap();
    let stdin = dir.path().join("stdin.bin");
    let n = proofjobs_guests::fibonacci_n_for_cycles(2_000_000);
    std::fs::write(&stdin, fibonacci_stdin(n)).unwrap();
    for mode in ["core", "compressed"] {
        let out_path = dir.path().join(format!("{mode}.proof"));
        let out = Command::new(bin("proofctl"))
            .arg("prove")
            .arg("--elf")
            .arg(&elf)
            .arg("--stdin")
            .arg(&stdin)
            .args(["--mode", mode, "--out"])
            .arg(&out_path)
            .env("PROOFJOBS_TASK_RUNNER", cuda_runner())
            .env("PROOFJOBS_PROVER", "cuda")
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let proof = verify_strictly(proofjobs_guests::FIBONACCI_ELF, proofjobs_guests::MEMTRAFFIC_ELF, &out_path).await.unwrap();
        // The CPU path commits these for the same n (checked by the CPU proof tests).
        assert_eq!(proof.public_values.as_slice(), proofjobs_guests::fibonacci_public_values(n).as_slice(), "{mode}");
    }
}
