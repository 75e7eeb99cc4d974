//! The Kubernetes backend on a real control plane (tests/k8s/cluster.sh): real kube-apiserver,
//! controller-manager (Job controller, pod GC, TTL) and scheduler; the node agent runs the
//! stage Jobs' pods as real task-runner processes; the dispatcher uses its least-privilege
//! ServiceAccount. One test at a time (node names are cluster-wide).

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::{
    api::{DeleteParams, PostParams},
    Api,
};
use proofjobs_api::proto::GetRequest;
use proofjobs_dispatcher::{
    backend::{RunnerSpec, Share},
    kubernetes::{
        job_spec::{build_job, job_name, JobSettings},
        profiles::StageProfiles,
    },
    Placement,
};
use proofjobs_pipeline::{
    stage::{group_name, Mode, Stage},
    state::Priority,
};
use proofjobs_tests::{kube_env::*, *};

async fn submit_ok(cluster: &Cluster, mode: &str, program: &[u8], stdin: &[u8]) -> String {
    submit(cluster, mode, program, stdin, now() + 3600).await.unwrap()
}

async fn dispatcher_client(env: &KubeEnv) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&env.dispatcher_kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Every stage group Job of every mode and placement, created with the dispatcher's own
/// (least-privilege) credentials: the real apiserver must accept each, and the account must
/// not reach Secrets.
#[tokio::test(flavor = "multi_thread")]
async fn every_stage_job_of_every_mode_is_accepted_by_the_apiserver() {
    init_tracing();
    let _k = kube_lock().await;
    let options = KubeOptions { pools: Vec::new(), ..Default::default() };
    let env =
        KubeEnv::create("postgres://unused@127.0.0.1:1/x", "postgres://unused@127.0.0.1:1/x", "redis://127.0.0.1:1", &options).unwrap();
    let jobs: Api<Job> = Api::namespaced(dispatcher_client(&env).await, &env.namespace);
    let profiles = StageProfiles::default();
    let mut settings = JobSettings::for_tests(&env.namespace);
    settings.service_account = Some("proofjobs-runner".into());
    let mut created = 0;
    for (i, mode) in [Mode::Execute, Mode::Core, Mode::Compressed, Mode::Plonk, Mode::Groth16].into_iter().enumerate() {
        for placement in ["per-stage", "all", "execute,wrap/setup,prove-core,compress,shrink"] {
            let placement = Placement::parse(placement).unwrap();
            let mut groups: Vec<Vec<Stage>> = mode.stages().iter().map(|s| placement.group_of(*s).to_vec()).collect();
            groups.dedup();
            for (attempt, group) in groups.into_iter().enumerate() {
                let proof_id = format!("proof-{}-{i}", mode.as_str());
                let spec = RunnerSpec {
                    runner_id: job_name(&proof_id, &group_name(&group), attempt as u32),
                    proof_id,
                    stages: group.clone(),
                    deadline_secs: 3600,
                    share: Share {
                        requester: "team-a".into(),
                        weight: 2,
                        max_gpu_runners: Some(4),
                        priority: [Priority::Low, Priority::Normal, Priority::High][i % 3],
                    },
                    runner_token: None,
                };
                for suspend in [false, true] {
                    let mut job = build_job(&spec, &profiles.for_group(&group), &settings, suspend);
                    if suspend {
                        job.metadata.name = Some(format!("{}-s", spec.runner_id));
                    }
                    let name = job.metadata.name.clone().unwrap();
                    let back = jobs
                        .create(&PostParams::default(), &job)
                        .await
                        .unwrap_or_else(|e| panic!("{name} ({}) rejected: {e}", mode.as_str()));
                    let labels = back.metadata.labels.unwrap();
                    assert_eq!(labels["proofjobs.io/stage"], group_name(&group));
                    assert_eq!(back.spec.unwrap().pod_failure_policy.unwrap().rules.len(), 3);
                    jobs.delete(&name, &DeleteParams::background()).await.unwrap();
                    created += 1;
                }
            }
        }
    }
    assert!(created >= 40, "{created}");
    let can = std::process::Command::new(std::path::Path::new(&std::env::var("PROOFJOBS_K8S_BIN").unwrap()).join("kubectl"))
        .args(["auth", "can-i", "get", "secrets", "-n", &env.namespace])
        .env("KUBECONFIG", &env.dispatcher_kubeconfig)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no", "the dispatcher account must not read Secrets");
}

/// An execute-mode proof as a Job on the cpu pool, with progress and logs visible through
/// kubectl; then an undecodable stdin: exit 65, the Job fails by its podFailurePolicy, the
/// proof fails at once with the cause and no retry Job is made.
#[tokio::test(flavor = "multi_thread")]
async fn stage_jobs_run_real_runners_and_bad_input_fails_without_retry() {
    init_tracing();
    let _k = kube_lock().await;
    let options = KubeOptions::default();
    let (cluster, env) = KubeEnv::cluster(&options).await.unwrap();
    let mut client = cluster.client().await;

    let id = submit_ok(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(1000)).await;
    let proof = wait_finished(&mut client, &id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, env.node_agent_log());
    assert!(proof.cycles > 0);
    let names = env.job_names(&id);
    let execute_job = job_name(&id, "execute", 0);
    assert_eq!(names, vec![execute_job.clone()]);
    let view = env.jobs_view(&id);
    let row = view.lines().find(|l| l.starts_with(&execute_job)).unwrap_or_else(|| panic!("{view}"));
    assert!(row.contains("execute") && row.contains("1-of-1"), "progress label not kept current:\n{view}");
    let logs = kubectl(&["-n", &env.namespace, "logs", &format!("job/{execute_job}")]);
    assert!(logs.contains("runner started"), "kubectl logs shows no task-runner log:\n{logs}");
    assert!(env.event_reasons(&execute_job, "Created").contains(&"Created".to_string()), "no Created Event on {execute_job}");

    // Bad input from a cluster client: the stdin is not an SP1Stdin.
    let bad = format!("badstdin-{}", uuid::Uuid::now_v7().simple());
    create_proof_with_undecodable_stdin(&cluster, &bad).await;
    let proof = wait_finished(&mut client, &bad, Duration::from_secs(120)).await.unwrap();
    assert_eq!(proof.status, "failed");
    assert!(proof.failure_cause.contains("stdin is not a bincode-serialized SP1Stdin"), "{}", proof.failure_cause);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.job_names(&bad), vec![job_name(&bad, "execute", 0)], "no retry Job for bad input");
    let status = kubectl(&[
        "-n",
        &env.namespace,
        "get",
        "job",
        &job_name(&bad, "execute", 0),
        "-o",
        "jsonpath={.status.failed}/{.status.conditions[?(@.type==\"Failed\")].reason}",
    ]);
    assert_eq!(status, "1/PodFailurePolicy", "one pod, failed by the exit-65 rule");
    // `kubectl describe job` tells the story: created, then the proof failed with the cause.
    let reasons = env.event_reasons(&job_name(&bad, "execute", 0), "ProofFailed");
    assert!(reasons.contains(&"Created".to_string()) && reasons.contains(&"ProofFailed".to_string()), "{reasons:?}");
    let db = cluster.db.db().await;
    let codes: Vec<Option<i32>> = sqlx::query_scalar("SELECT exit_code FROM runners WHERE proof_id = $1 AND backend = 'kubernetes'")
        .bind(&bad)
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(codes, vec![Some(65)]);
    cluster.shutdown().await;
}

/// Faults that must not fail a proof: a runner process killed mid-task (counted, a new attempt
/// Job), a stage Job deleted by hand (a new attempt Job), a node deleted under a running pod
/// (replaced inside the Job, not counted), and a runner that hangs (stopped, so its heartbeat
/// goes stale: its pod is deleted and its task handed on). Execute mode of a long program keeps
/// each runner busy long enough to hit it.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_runner_a_deleted_job_a_lost_node_and_a_hung_runner_do_not_fail_the_proof() {
    init_tracing();
    let _k = kube_lock().await;
    // Heartbeats come every 5 s; 20 s of silence is a hang here (120 s by default).
    let options = KubeOptions { dispatcher_env: vec![("PROOFJOBS_HUNG_RUNNER_SECS", "20".into())], ..KubeOptions::default() };
    let (cluster, env) = KubeEnv::cluster(&options).await.unwrap();
    let mut client = cluster.client().await;
    let n = fibonacci_n_for_cycles(400_000_000);

    // 1. kill -9 of the task-runner process of the first attempt.
    let id = submit_ok(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(n)).await;
    let pid = wait_runner(&id, Duration::from_millis(200)).await.0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SAFETY: killing a task-runner process of this test.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let proof = wait_finished(&mut client, &id, Duration::from_secs(600)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, env.node_agent_log());
    assert_eq!(env.job_names(&id), vec![job_name(&id, "execute", 0), job_name(&id, "execute", 1)]);
    let reasons = env.event_reasons(&job_name(&id, "execute", 0), "Retrying");
    assert!(reasons.contains(&"Retrying".to_string()), "the killed runner's Job says it was retried: {reasons:?}");

    // 2. The stage Job deleted by hand while its pod works.
    let id = submit_ok(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(n)).await;
    wait_runner(&id, Duration::from_millis(200)).await;
    kubectl(&["-n", &env.namespace, "delete", "job", &job_name(&id, "execute", 0), "--cascade=background"]);
    let proof = wait_finished(&mut client, &id, Duration::from_secs(600)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, env.node_agent_log());
    assert!(env.job_names(&id).contains(&job_name(&id, "execute", 1)), "{:?}", env.job_names(&id));

    // 3. The node under a running pod is deleted (a lost machine): the pod GC fails the pod with
    // DisruptionTarget, the Job replaces it (podFailurePolicy Ignore), no failure is counted.
    let id = submit_ok(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(n)).await;
    let pid = wait_runner(&id, Duration::from_millis(200)).await.0;
    let job = job_name(&id, "execute", 0);
    let node = kubectl(&[
        "-n",
        &env.namespace,
        "get",
        "pods",
        "-l",
        &format!("batch.kubernetes.io/job-name={job}"),
        "-o",
        "jsonpath={.items[0].spec.nodeName}",
    ]);
    assert!(!node.is_empty());
    kubectl(&["delete", "node", &node, "--wait=false"]);
    let gone = Instant::now();
    while pid_alive(pid) {
        assert!(gone.elapsed() < Duration::from_secs(30), "the lost node's runner process is still running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let proof = wait_finished(&mut client, &id, Duration::from_secs(600)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, env.node_agent_log());
    assert_eq!(env.job_names(&id), vec![job.clone()], "a lost node is retried inside the Job, not as a new attempt");
    let db = cluster.db.db().await;
    let failures: i32 = db.group_states(std::slice::from_ref(&id), "kubernetes").await.unwrap().iter().map(|g| g.failures).sum();
    assert_eq!(failures, 0, "a lost node is not the runner's failure");
    let pods = kubectl(&["-n", &env.namespace, "get", "pods", "-l", &format!("batch.kubernetes.io/job-name={job}"), "-o", "name"]);
    println!("pods of {job} after the node loss:\n{pods}");

    // 4. A hung runner: SIGSTOP freezes it mid-task, heartbeats included. The dispatcher deletes
    // its pod (the node agent then kills the process), says so on the Job, hands the task on,
    // and the proof completes.
    let id = submit_ok(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(n)).await;
    let (pid, pod) = wait_runner(&id, Duration::from_millis(200)).await;
    wait_registered(&db, &pod).await;
    // SAFETY: stopping a task-runner process of this test.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_stopped(pid, &env).await;
    let proof = wait_finished(&mut client, &id, Duration::from_secs(600)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, env.node_agent_log());
    assert_hung_on_a_job(&env, &id);

    // 5. A runner frozen before it registered: no row, no heartbeat to go stale. Its pod is
    // deleted once its container has run past the limit. (The freeze races the runner's start;
    // when the runner wins, step 4's path takes it, and the test says which path it saw.)
    let id = submit_ok(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(fibonacci_n_for_cycles(1_000_000))).await;
    let (pid, pod) = wait_runner(&id, Duration::from_millis(1)).await;
    // SAFETY: stopping a task-runner process of this test.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let registered_first = db.known_runners(std::slice::from_ref(&pod)).await.unwrap().contains(&pod);
    println!("frozen runner {pod} had {}registered", if registered_first { "" } else { "not " });
    wait_stopped(pid, &env).await;
    let proof = wait_finished(&mut client, &id, Duration::from_secs(600)).await.unwrap();
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, env.node_agent_log());
    assert_hung_on_a_job(&env, &id);
    if !registered_first {
        assert!(db.known_runners(std::slice::from_ref(&pod)).await.unwrap().is_empty(), "the frozen runner never registered");
    }
    cluster.shutdown().await;
}

/// GPU Jobs follow their queue within the caps: a proof with 8 waiting shard tasks gets a Job of
/// parallelism 2 (the per-Job cap; 4 tasks per runner), the next proof's Job takes the last GPU of
/// the global cap of 3, and a third proof's Job is created suspended (`waiting=queued`) until the
/// first proof is cancelled. With no gpu nodes at all, pods stay unschedulable: Jobs say
/// `waiting-for-capacity`, and a dispatcher restarted with a 5 s limit fails those proofs with that
/// cause (adopting the Jobs it finds, no twins).
#[tokio::test(flavor = "multi_thread")]
async fn gpu_jobs_follow_the_queue_within_caps_and_capacity_wait_fails_the_proof() {
    init_tracing();
    let _k = kube_lock().await;
    let options = KubeOptions {
        pools: Vec::new(),
        dispatcher_env: vec![("PROOFJOBS_MAX_GPU_PODS", "3".into()), ("PROOFJOBS_MAX_PODS_PER_JOB", "2".into())],
        ..Default::default()
    };
    let (mut cluster, env) = KubeEnv::cluster(&options).await.unwrap();
    let db = cluster.db.db().await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let ids: Vec<String> = ["a", "b", "c"].iter().map(|p| format!("cap-{p}-{suffix}")).collect();
    let job = |id: &str| {
        kubectl(&[
            "-n",
            &env.namespace,
            "get",
            "job",
            &job_name(id, "prove-core", 0),
            "-o",
            "jsonpath={.spec.parallelism}/{.spec.suspend}/{.metadata.labels.proofjobs\\.io/waiting}",
        ])
    };
    // One at a time, each Job settled before the next proof arrives, so the caps' order is known.
    for (id, tasks, parallelism) in [(&ids[0], 8, "2/"), (&ids[1], 1, "1/"), (&ids[2], 1, "1/")] {
        insert_stage_ready_proof(&db, id, Stage::ProveCore, sp1_prover_types::TaskType::ProveShard, tasks).await.unwrap();
        wait_job(&env, &job_name(id, "prove-core", 0)).await;
        let started = Instant::now();
        while !job(id).starts_with(parallelism) {
            assert!(started.elapsed() < Duration::from_secs(30), "{id}: {}", job(id));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let settle = Instant::now();
    loop {
        let states = (job(&ids[0]), job(&ids[1]), job(&ids[2]));
        if states == ("2/false/waiting-for-capacity".into(), "1/false/waiting-for-capacity".into(), "1/true/queued".into()) {
            break;
        }
        assert!(settle.elapsed() < Duration::from_secs(60), "Jobs never reached the capped shape: {states:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Freeing the first proof's GPUs lets the queued Job start.
    cluster.client().await.cancel(proofjobs_api::proto::CancelRequest { proof_id: ids[0].clone() }).await.unwrap();
    let resumed = Instant::now();
    while !job(&ids[2]).starts_with("1/false") {
        assert!(resumed.elapsed() < Duration::from_secs(60), "queued Job never resumed: {}", job(&ids[2]));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A short capacity limit: the unschedulable proofs fail with that cause.
    cluster.kill_dispatcher();
    cluster.dispatcher_env.retain(|(k, _)| *k != "PROOFJOBS_CAPACITY_WAIT_SECS");
    cluster.dispatcher_env.push(("PROOFJOBS_CAPACITY_WAIT_SECS", "5".into()));
    cluster.start_dispatcher();
    let mut client = cluster.client().await;
    for id in &ids[1..] {
        let proof = wait_finished(&mut client, id, Duration::from_secs(120)).await.unwrap();
        assert_eq!(proof.status, "failed");
        assert!(
            proof.failure_cause.contains("waiting for capacity") && proof.failure_cause.contains("prove-core"),
            "{}",
            proof.failure_cause
        );
        assert_eq!(env.job_names(id), vec![job_name(id, "prove-core", 0)], "no twin after the restart");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gpu_job_shows_the_gpu_its_pod_found() {
    // The pod's report is written as a CUDA runner writes it after its GPU check (there is no GPU
    // here); the dispatcher copies it onto the Job, where `kubectl get jobs -L proofjobs.io/gpu`
    // shows it.
    init_tracing();
    let _k = kube_lock().await;
    let (cluster, env) = KubeEnv::cluster(&KubeOptions { pools: Vec::new(), ..Default::default() }).await.unwrap();
    let db = cluster.db.db().await;
    let id = format!("gpu-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    insert_stage_ready_proof(&db, &id, Stage::ProveCore, sp1_prover_types::TaskType::ProveShard, 1).await.unwrap();
    let name = job_name(&id, "prove-core", 0);
    wait_job(&env, &name).await;
    let pod = format!("{name}-x1y2z");
    db.register_runner(&pod, &id, &[Stage::ProveCore], "kubernetes-pod", &name).await.unwrap();
    let device = "NVIDIA H200 (GPU 0, compute 9.0, 139.3 GiB free of 139.8 GiB, 1% busy)";
    db.set_runner_device(&pod, device).await.unwrap();
    db.runner_exited(&pod, Some(0), None).await.unwrap();
    let shown = || {
        kubectl(&[
            "-n",
            &env.namespace,
            "get",
            "job",
            &name,
            "-o",
            "jsonpath={.metadata.labels.proofjobs\\.io/gpu}|{.metadata.annotations.proofjobs\\.io/gpu}",
        ])
    };
    let started = Instant::now();
    while shown() != format!("NVIDIA-H200|{device}") {
        assert!(started.elapsed() < Duration::from_secs(30), "the Job never showed the GPU: {}", shown());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.shutdown().await;
}

async fn wait_job(env: &KubeEnv, name: &str) {
    let started = Instant::now();
    while !kubectl(&["-n", &env.namespace, "get", "jobs", "-o", "name"]).contains(name) {
        assert!(started.elapsed() < Duration::from_secs(30), "Job {name} was never created");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A live task-runner process of `proof_id` and its runner id (its pod's name).
fn runner_process(proof_id: &str) -> Option<(i32, String)> {
    let needle = format!("PROOFJOBS_PROOF_ID={proof_id}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let environ = String::from_utf8_lossy(&environ);
        let mut vars = environ.split('\0');
        if vars.clone().any(|v| v == needle) && pid_alive(pid) {
            let runner = vars.find_map(|v| v.strip_prefix("PROOFJOBS_RUNNER_ID=")).unwrap_or_default();
            return Some((pid, runner.to_string()));
        }
    }
    None
}

/// The first runner process of `proof_id`, looked for every `poll`, with its pod's name.
async fn wait_runner(proof_id: &str, poll: Duration) -> (i32, String) {
    let started = Instant::now();
    loop {
        if let Some(found) = runner_process(proof_id) {
            assert!(!found.1.is_empty(), "runner process {} has no PROOFJOBS_RUNNER_ID", found.0);
            return found;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no runner process for {proof_id}");
        tokio::time::sleep(poll).await;
    }
}

async fn wait_registered(db: &proofjobs_pipeline::state::Db, runner: &str) {
    let started = Instant::now();
    while !db.known_runners(&[runner.to_string()]).await.unwrap().contains(runner) {
        assert!(started.elapsed() < Duration::from_secs(30), "runner {runner} never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait for a frozen runner's process to be killed (its pod deleted by the dispatcher).
async fn wait_stopped(pid: i32, env: &KubeEnv) {
    let stopped = Instant::now();
    while pid_alive(pid) {
        assert!(stopped.elapsed() < Duration::from_secs(120), "the hung runner's process was never stopped\n{}", env.node_agent_log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("hung runner's process gone {:.0} s after it froze", stopped.elapsed().as_secs_f64());
}

fn assert_hung_on_a_job(env: &KubeEnv, proof_id: &str) {
    let jobs = env.job_names(proof_id);
    let reasons: Vec<String> = jobs.iter().flat_map(|job| env.event_reasons(job, "RunnerHung")).collect();
    assert!(reasons.contains(&"RunnerHung".to_string()), "the hung runner's Job says so: {jobs:?} {reasons:?}");
}

/// A real core proof through Jobs: the execute stage on the cpu pool, setup and shard proving on
/// the gpu pool, which starts at zero nodes, grows for the GPU stages and is gone ≤ 30 s after
/// the last GPU stage ends. The dispatcher is killed and restarted mid-proof: no twin Jobs.
/// (Setup and prove-core share a Job: two SP1 provers in separate pods do not fit this machine's
/// 24 GiB next to the controller.)
#[tokio::test(flavor = "multi_thread")]
async fn a_core_proof_runs_through_jobs_and_the_gpu_pool_returns_to_zero() {
    init_tracing();
    let _prover = prover_lock().await;
    let _k = kube_lock().await;
    let options = KubeOptions { placement: "execute/setup,prove-core", ..Default::default() };
    let (mut cluster, env) = KubeEnv::cluster(&options).await.unwrap();
    let mut client = cluster.client().await;
    let n = fibonacci_n_for_cycles(100_000);
    let id = submit_ok(&cluster, "core", FIBONACCI_ELF, &fibonacci_stdin(n)).await;
    let gpu_job = job_name(&id, "setup-prove-core", 0);

    // Mid-proof: once the GPU Job exists, restart the dispatcher.
    let started = Instant::now();
    let mut views = Vec::new();
    while !env.job_names(&id).contains(&gpu_job) {
        assert!(started.elapsed() < Duration::from_secs(600), "no GPU Job:\n{}", env.node_agent_log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    views.push(env.jobs_view(&id));
    cluster.kill_dispatcher();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_dispatcher();

    let proof = loop {
        let p = client.get(GetRequest { proof_id: id.clone() }).await.unwrap().into_inner();
        if matches!(p.status.as_str(), "completed" | "failed" | "cancelled") {
            break p;
        }
        if views.len() < 20 {
            views.push(env.jobs_view(&id));
        }
        assert!(started.elapsed() < Duration::from_secs(1500), "proof did not finish");
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, env.node_agent_log());
    let finished_at = Instant::now();
    assert_eq!(env.job_names(&id), vec![job_name(&id, "execute", 0), gpu_job.clone()], "twin or retry Jobs");
    let final_view = env.jobs_view(&id);
    assert!(final_view.lines().any(|l| l.starts_with(&gpu_job) && l.contains("setup-prove-core")), "{final_view}");
    println!("kubectl get jobs during the proof:\n{}\nafter:\n{final_view}", views.join("\n"));
    let logs = kubectl(&["-n", &env.namespace, "logs", &format!("job/{gpu_job}")]);
    assert!(logs.contains("task succeeded"), "{logs}");

    let path = cluster.dir.path().join("k8s.proof");
    download_and_verify(&mut client, &id, &path).await;

    // Scale to zero: every gpu node that came up goes down within 30 s of the proof's end.
    let deadline = finished_at + Duration::from_secs(30);
    let gpu_nodes_up = |events: &[serde_json::Value]| {
        let ups = events.iter().filter(|e| e["event"] == "node_up" && e["pool"] == "gpu").count();
        let downs = events.iter().filter(|e| e["event"] == "node_down" && e["pool"] == "gpu").count();
        (ups, downs)
    };
    loop {
        let (ups, downs) = gpu_nodes_up(&env.node_events());
        assert!(ups >= 1, "the gpu pool never grew: {:?}", env.node_events());
        if ups == downs {
            break;
        }
        assert!(Instant::now() < deadline, "gpu nodes still up 30 s after the last GPU stage: {:?}", env.node_events());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let gone_after = finished_at.elapsed();
    let events = env.node_events();
    let node_secs = gpu_node_seconds(&events);
    let db = cluster.db.db().await;
    let intervals: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8 FROM tasks
         WHERE proof_id = $1 AND stage IN ('setup', 'prove-core') AND started_at IS NOT NULL AND finished_at IS NOT NULL",
    )
    .bind(&id)
    .fetch_all(db.pool())
    .await
    .unwrap();
    let task_secs: f64 = intervals.iter().map(|(a, b)| b - a).sum();
    let busy_secs = union_length(intervals);
    println!(
        "GPU node-seconds {node_secs:.1}; GPU task-seconds {task_secs:.1} (tasks overlap; wall time with a GPU task running {busy_secs:.1} s); gpu pool back to zero {:.1} s after the proof ended",
        gone_after.as_secs_f64()
    );
    assert!(busy_secs > 0.0 && node_secs >= busy_secs, "node-seconds {node_secs} < GPU-busy seconds {busy_secs}");
    cluster.shutdown().await;
}

/// Seconds gpu nodes were up, from the node agent's node_up/node_down events.
fn gpu_node_seconds(events: &[serde_json::Value]) -> f64 {
    let mut up: std::collections::HashMap<String, f64> = Default::default();
    let mut total = 0.0;
    for e in events.iter().filter(|e| e["pool"] == "gpu") {
        let node = e["node"].as_str().unwrap_or_default().to_string();
        let t = e["t"].as_f64().unwrap_or(0.0) / 1000.0; // unix milliseconds
        match e["event"].as_str() {
            Some("node_up") => {
                up.insert(node, t);
            }
            Some("node_down") => {
                if let Some(start) = up.remove(&node) {
                    total += t - start;
                }
            }
            _ => {}
        }
    }
    total
}

/// Total length of the union of time intervals.
fn union_length(mut intervals: Vec<(f64, f64)>) -> f64 {
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (a, b) in intervals {
        current = match current {
            Some((s, e)) if a <= e => Some((s, e.max(b))),
            Some((s, e)) => {
                total += e - s;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    total + current.map(|(s, e)| e - s).unwrap_or(0.0)
}
