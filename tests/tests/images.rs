//! The Dockerfile's images, built as scripts/images.sh builds them (podman, a debootstrap base,
//! the workspace's release binaries), run the way the manifests run them: as UID 10001, with a
//! read-only root filesystem, no capabilities, and only a scratch tmpfs to write to. The
//! task-runner image proves it can do a runner's job by running a real execute-mode stage,
//! started by a real dispatcher, against the test PostgreSQL and Redis.

use std::{path::Path, process::Command, time::Duration};

use proofjobs_guests::FIBONACCI_ELF;
use proofjobs_tests::*;

const COMPONENTS: [(&str, &str); 4] =
    [("api", "proofjobs-api"), ("dispatcher", "proofjobs-dispatcher"), ("proofctl", "proofctl"), ("task-runner", "task-runner")];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Builds (or refreshes) the images once per test binary; returns `(image, bytes)` per target.
fn build_images() -> &'static [(String, u64)] {
    static BUILT: std::sync::OnceLock<Vec<(String, u64)>> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_images_now)
}

fn build_images_now() -> Vec<(String, u64)> {
    let out = Command::new(repo_root().join("scripts/images.sh")).output().expect("running scripts/images.sh");
    assert!(out.status.success(), "scripts/images.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(image, size)| (image.to_string(), size.trim().parse().unwrap())))
        .collect()
}

fn podman() -> Command {
    let mut cmd = Command::new("podman");
    let conf = std::env::var("HOME").map(|h| format!("{h}/.cache/proofjobs/images/containers.conf")).unwrap();
    cmd.env("CONTAINERS_CONF", conf);
    cmd
}

/// `podman run` with the restrictions of the manifests' securityContext.
fn restricted_run(network: &str) -> Command {
    let mut cmd = podman();
    cmd.args(["run", "--rm", "--network", network, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]).args([
        "--read-only",
        "--tmpfs",
        "/scratch",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ]);
    cmd
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("running podman");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn each_image_runs_its_binary_as_a_non_root_user_with_no_build_tools() {
    let built = build_images();
    let mut targets = COMPONENTS.to_vec();
    // The CUDA runner's image exists when scripts/build-cuda.sh built its binary (the suite does);
    // its base here is the plain one, as no CUDA image can be pulled (scripts/images.sh).
    if built.iter().any(|(image, _)| image.starts_with("localhost/proofjobs/task-runner-cuda:")) {
        targets.push(("task-runner-cuda", "task-runner"));
    } else {
        eprintln!("NOTE: no task-runner-cuda image (scripts/build-cuda.sh has not built the CUDA runner); not checked");
    }
    for (target, binary) in targets {
        let image = format!("localhost/proofjobs/{target}:dev");
        let size = built.iter().find(|(i, _)| *i == image).unwrap_or_else(|| panic!("{image} was not built: {built:?}")).1;
        println!("image {image}: {:.1} MB", size as f64 / 1e6);

        let (ok, user) = output(podman().args(["image", "inspect", "--format", "{{.Config.User}}", &image]));
        assert!(ok, "{user}");
        assert_eq!(user.trim(), "10001:10001", "{image} must run as the fixed non-root UID");

        let (ok, help) = output(restricted_run("none").arg(&image).arg("--help"));
        assert!(ok, "{image} --help failed:\n{help}");
        assert!(help.contains(&format!("Usage: {binary}")), "{image} --help is not {binary}'s:\n{help}");

        // No compiler, linker or cargo in a runtime image; the process is not root.
        let probe = "id -u; for t in cc gcc clang rustc cargo ld make; do command -v $t; done; true";
        let (ok, probed) = output(restricted_run("none").args(["--entrypoint", "/bin/sh"]).arg(&image).args(["-c", probe]));
        assert!(ok, "{probed}");
        let mut lines = probed.lines();
        assert_eq!(lines.next(), Some("10001"), "{image}: {probed}");
        let tools: Vec<&str> = lines.collect();
        assert!(tools.is_empty(), "{image} carries build tools: {tools:?}");
    }
}

/// The task-runner image as the local backend's runner: a wrapper named like the runner binary
/// (the dispatcher checks /proc/<pid>/cmdline) that runs the image with the runner's contract
/// variables and the host network, and records the container's id.
fn runner_wrapper(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("task-runner-in-image");
    let conf = std::env::var("HOME").map(|h| format!("{h}/.cache/proofjobs/images/containers.conf")).unwrap();
    use proofjobs_pipeline::runner_env::*;
    let vars = [PROOF_ID, STAGES, RUNNER_ID, RUNNER_BACKEND, DATABASE_URL, ARTIFACT_STORE, RUNNER_TOKEN];
    let env_args: String = vars.iter().map(|v| format!(" --env {v}")).collect();
    let script = format!(
        "#!/bin/sh\nexport CONTAINERS_CONF={conf}\nexec podman run --cidfile {cid}/$PROOFJOBS_RUNNER_ID.cid --network host \
         --ulimit nofile=16384:16384 --ulimit nproc=4096:4096 --read-only --tmpfs /scratch --env TMPDIR=/scratch \
         --cap-drop ALL --security-opt no-new-privileges{env_args} localhost/proofjobs/task-runner:dev\n",
        cid = dir.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_task_runner_image_runs_a_real_execute_stage() {
    init_tracing();
    build_images();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = runner_wrapper(dir.path());
    let cluster = Cluster::start_with(None, &[], vec![("PROOFJOBS_TASK_RUNNER", wrapper.display().to_string())]).await.unwrap();
    let n = 5_000;
    let id = submit(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(n), 0).await.unwrap();
    let mut client = cluster.client().await;
    let proof = wait_finished(&mut client, &id, Duration::from_secs(180)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, cluster.runner_logs());
    assert_eq!(proof.public_values, proofjobs_guests::fibonacci_public_values(n));
    assert!(proof.cycles > 0);

    // The stage ran in a container of the image, which exited 0.
    let cids: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "cid")).collect();
    assert_eq!(cids.len(), 1, "expected one runner container, found {}\n{}", cids.len(), cluster.runner_logs());
    let cid = std::fs::read_to_string(cids[0].path()).unwrap();
    let (ok, state) = output(podman().args(["inspect", "--format", "{{.ImageName}} {{.State.ExitCode}} {{.Config.User}}", cid.trim()]));
    assert!(ok, "{state}");
    assert_eq!(state.trim(), "localhost/proofjobs/task-runner:dev 0 10001:10001");
    let _ = podman().args(["rm", cid.trim()]).output();
    cluster.shutdown().await;
}
