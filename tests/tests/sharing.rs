//! Sharing a cluster between requesters, on the real control plane (tests/k8s/cluster.sh): the
//! proofs-in-flight quota, fair share of capped GPU slots, and the GPU runner quota, as the api
//! and `kubectl get jobs` show them, and priority preemption. For the quotas and the fair share
//! the work is inserted directly (no proving): what is under test is who gets a GPU Job, not
//! what the Job does; no node agent runs, so GPU pods stay unschedulable and hold their slots
//! until their proof ends. Preemption takes real proofs on a node agent's full GPU pool.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use proofjobs_api::proto::{CancelRequest, GetRequest};
use proofjobs_dispatcher::kubernetes::job_spec::job_name;
use proofjobs_pipeline::{
    stage::{labels::OVER_QUOTA, Stage},
    state::RequesterRow,
};
use proofjobs_tests::{kube_env::*, *};
use sp1_prover_types::TaskType;

/// `parallelism/suspend/waiting` of every GPU Job of the namespace, by proof.
fn gpu_jobs(env: &KubeEnv) -> BTreeMap<String, String> {
    let out = kubectl(&[
        "-n",
        &env.namespace,
        "get",
        "jobs",
        "-l",
        "proofjobs.io/stage=prove-core",
        "-o",
        "jsonpath={range .items[*]}{.metadata.annotations.proofjobs\\.io/proof-id} {.spec.parallelism}/{.spec.suspend}/{.metadata.labels.proofjobs\\.io/waiting}{\"\\n\"}{end}",
    ]);
    out.lines().filter_map(|l| l.split_once(' ')).map(|(proof, state)| (proof.to_string(), state.to_string())).collect()
}

fn running(jobs: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    jobs.iter().filter(|(p, s)| p.starts_with(prefix) && s.starts_with("1/false")).map(|(p, _)| p.clone()).collect()
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) -> Duration {
    let started = Instant::now();
    loop {
        match check() {
            Ok(()) => return started.elapsed(),
            Err(state) if started.elapsed() > timeout => panic!("{what} within {timeout:?}; now: {state}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Requester A fills the GPU cap of 2 and queues 8 more GPU Jobs; its 11th proof is over its
/// in-flight quota of 10 and waits as `queued-over-quota` (api) with no Job. B then submits two
/// proofs and may run one GPU pod at a time. When two of A's proofs end, B's first Job takes a
/// freed GPU ahead of A's eight older queued Jobs, B's second waits as `queued-over-quota` on its
/// Job label, the other GPU goes to A's oldest queued Job, and A's 11th proof starts.
#[tokio::test(flavor = "multi_thread")]
async fn gpu_slots_are_shared_fairly_and_quotas_queue_visibly() {
    init_tracing();
    let _k = kube_lock().await;
    let options = KubeOptions {
        pools: Vec::new(),
        dispatcher_env: vec![("PROOFJOBS_MAX_GPU_PODS", "2".into()), ("PROOFJOBS_MAX_PODS_PER_JOB", "1".into())],
        ..Default::default()
    };
    let (cluster, env) = KubeEnv::cluster(&options).await.unwrap();
    let db = cluster.db.db().await;
    db.set_requester(&RequesterRow { name: "team-a".into(), max_in_flight: Some(10), ..Default::default() }, &[]).await.unwrap();
    db.set_requester(&RequesterRow { name: "team-b".into(), max_gpu_runners: Some(1), ..Default::default() }, &[]).await.unwrap();
    let a_key = cluster.create_key("team-a", false).await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let a: Vec<String> = (0..11).map(|i| format!("a{i:02}-{suffix}")).collect();
    let b: Vec<String> = (0..2).map(|i| format!("b{i:02}-{suffix}")).collect();

    // A's ten proofs, one after the other so their order is known: two GPU Jobs run, eight wait
    // behind the cap.
    for id in &a[..10] {
        insert_stage_ready_proof_of(&db, "team-a", id, Stage::ProveCore, TaskType::ProveShard, 1).await.unwrap();
        wait_until("the proof's Job", Duration::from_secs(30), || if gpu_jobs(&env).contains_key(id) { Ok(()) } else { Err(id.clone()) })
            .await;
    }
    wait_until("A's ten Jobs: two running, eight queued", Duration::from_secs(60), || {
        let jobs = gpu_jobs(&env);
        let queued = jobs.values().filter(|s| s.as_str() == "1/true/queued").count();
        if jobs.len() == 10 && running(&jobs, "a").len() == 2 && queued == 8 {
            Ok(())
        } else {
            Err(format!("{jobs:?}"))
        }
    })
    .await;
    let first_two = running(&gpu_jobs(&env), "a");

    // The 11th: accepted, no Job, its reason visible to its owner through the api.
    insert_stage_ready_proof_of(&db, "team-a", &a[10], Stage::ProveCore, TaskType::ProveShard, 1).await.unwrap();
    let mut a_client = cluster.client_with_key(Some(&a_key)).await;
    let asked = Instant::now();
    while db_waiting(&db, &a[10]).await != OVER_QUOTA {
        assert!(asked.elapsed() < Duration::from_secs(30), "A's 11th proof never showed {OVER_QUOTA}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown = a_client.get(GetRequest { proof_id: a[10].clone() }).await.unwrap().into_inner();
    assert_eq!((shown.status.as_str(), shown.waiting.as_str()), ("pending", OVER_QUOTA));
    assert!(!gpu_jobs(&env).contains_key(&a[10]), "a proof over its in-flight quota gets no Job");

    // B arrives while the cap is full: its Jobs wait behind it.
    for id in &b {
        insert_stage_ready_proof_of(&db, "team-b", id, Stage::ProveCore, TaskType::ProveShard, 1).await.unwrap();
    }
    wait_until("B's Jobs queued", Duration::from_secs(30), || {
        let jobs = gpu_jobs(&env);
        if b.iter().all(|id| jobs.get(id).map(String::as_str) == Some("1/true/queued")) {
            Ok(())
        } else {
            Err(format!("{jobs:?}"))
        }
    })
    .await;
    let requester = kubectl(&[
        "-n",
        &env.namespace,
        "get",
        "job",
        &job_name(&b[0], "prove-core", 0),
        "-o",
        "jsonpath={.metadata.labels.proofjobs\\.io/requester}",
    ]);
    assert_eq!(requester, "team-b");

    // Two of A's proofs end: one slot turnover.
    for id in &first_two {
        a_client.cancel(CancelRequest { proof_id: id.clone() }).await.unwrap();
    }
    let turnover = Instant::now();
    let b_started = wait_until("B's first Job takes a freed GPU", Duration::from_secs(60), || {
        let jobs = gpu_jobs(&env);
        if jobs.get(&b[0]).is_some_and(|s| s.starts_with("1/false")) {
            Ok(())
        } else {
            Err(format!("{jobs:?}"))
        }
    })
    .await;
    let settled = wait_until("the second GPU to A's oldest queued Job, B's second over quota", Duration::from_secs(60), || {
        let jobs = gpu_jobs(&env);
        let a_running = running(&jobs, "a");
        let b1 = jobs.get(&b[1]).cloned().unwrap_or_default();
        if a_running == vec![a[2].clone()] && b1 == format!("1/true/{OVER_QUOTA}") && jobs.contains_key(&a[10]) {
            Ok(())
        } else {
            Err(format!("{jobs:?}"))
        }
    })
    .await;
    assert_eq!(first_two, vec![a[0].clone(), a[1].clone()], "the oldest proofs got the GPUs first");
    // A's 11th started when A's in-flight count dropped, and now queues behind the cap like any Job.
    assert_eq!(db_waiting(&db, &a[10]).await, "");
    eprintln!(
        "fair share: B's Job ran {:.1} s after two of A's proofs were cancelled (their Jobs are deleted after the 5 s finished grace); all settled {:.1} s after ({:.1} s in all)",
        b_started.as_secs_f64(),
        settled.as_secs_f64(),
        turnover.elapsed().as_secs_f64()
    );
    assert!(b_started < Duration::from_secs(30), "B waited {b_started:?} for one slot turnover");
    db.close().await;
    cluster.shutdown().await;
}

/// Why a proof waits, as the api reads it ("" when it does not).
async fn db_waiting(db: &proofjobs_pipeline::state::Db, id: &str) -> String {
    db.get_proof(id).await.unwrap().expect("the proof exists").waiting.unwrap_or_default()
}

/// Real core proofs on a full GPU pool (one node, one GPU): requester `batch` (priority low) is
/// proving shards when requester `urgent` (priority high) submits. The scheduler preempts the
/// low-priority GPU pod for the high one; the preempted runner hands its tasks back and its Job
/// starts a replacement once the GPU is free again. Both proofs complete and verify; the
/// preempted proof has no runner failure counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_high_priority_proof_preempts_a_low_priority_gpu_pod_and_both_complete() {
    init_tracing();
    let _prover = prover_lock().await;
    let _k = kube_lock().await;
    let classes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/base/priority-classes.yaml");
    kubectl(&["apply", "-f", classes.to_str().unwrap()]);
    let options = KubeOptions {
        placement: "execute/setup,prove-core",
        pools: vec!["cpu:min=1,max=2,cpu=16,memory=64Gi".into(), "gpu:min=1,max=1,cpu=16,memory=64Gi,gpus=1".into()],
        ..Default::default()
    };
    // Pending pods that earlier tests left (their namespaces are deleted in the background) have
    // the default priority, above `low`: on a free GPU node they would preempt the batch proof.
    let settled = Instant::now();
    loop {
        let pending = kubectl(&["get", "pods", "-A", "--field-selector=status.phase=Pending", "-o", "name"]);
        if pending.trim().is_empty() {
            break;
        }
        assert!(settled.elapsed() < Duration::from_secs(120), "other tests' pods still pending:\n{pending}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (cluster, env) = KubeEnv::cluster(&options).await.unwrap();
    let db = cluster.db.db().await;
    for (name, priority) in [("batch", "low"), ("urgent", "high")] {
        let row = RequesterRow { name: name.into(), priority: Some(priority.into()), ..Default::default() };
        db.set_requester(&row, &[]).await.unwrap();
    }
    let (batch_key, urgent_key) = (cluster.create_key("batch", false).await, cluster.create_key("urgent", false).await);
    let submit = |key: String| {
        let cluster = &cluster;
        async move {
            let messages = submit_messages("core", FIBONACCI_ELF, &fibonacci_stdin(fibonacci_n_for_cycles(100_000)), 0, 0);
            let mut client = cluster.client_with_key(Some(&key)).await;
            client.submit(futures::stream::iter(messages)).await.unwrap().into_inner().proof_id
        }
    };
    let mut batch_client = cluster.client_with_key(Some(&batch_key)).await;
    let low = submit(batch_key.clone()).await;

    // Wait until the low-priority proof is proving shards on the only GPU.
    let started = Instant::now();
    loop {
        let p = batch_client.get(GetRequest { proof_id: low.clone() }).await.unwrap().into_inner();
        assert_ne!(p.status, "failed", "{}", p.failure_cause);
        if p.stages.iter().any(|s| s.stage == "prove-core" && s.running > 0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "no shard proving started:\n{}", env.node_agent_log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let low_job = job_name(&low, "setup-prove-core", 0);
    let no_preemption_yet = kubectl(&["-n", &env.namespace, "get", "events", "--field-selector", "reason=Preempted", "-o", "name"]);
    assert!(no_preemption_yet.trim().is_empty(), "preempted before the high-priority proof came: {no_preemption_yet}");
    let high = submit(urgent_key.clone()).await;
    let high_job = job_name(&high, "setup-prove-core", 0);
    let template_class =
        |job: &str| kubectl(&["-n", &env.namespace, "get", "job", job, "-o", "jsonpath={.spec.template.spec.priorityClassName}"]);

    // The scheduler preempts the low-priority pod.
    let preempted = Instant::now();
    let victims = loop {
        let out = kubectl(&[
            "-n",
            &env.namespace,
            "get",
            "events",
            "--field-selector",
            "reason=Preempted",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.name}{\"\\n\"}{end}",
        ]);
        let victims: Vec<String> = out.lines().map(str::to_string).collect();
        if !victims.is_empty() {
            break victims;
        }
        assert!(preempted.elapsed() < Duration::from_secs(300), "nothing was preempted:\n{}", env.node_agent_log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("preempted {victims:?} {:.1} s after the high-priority proof arrived", preempted.elapsed().as_secs_f64());
    assert!(victims.iter().all(|pod| pod.starts_with(&low_job)), "only the low-priority proof's GPU pod goes: {victims:?}");
    assert!(env.job_names(&high).contains(&high_job), "preempted for the high-priority proof's GPU Job");
    assert_eq!(template_class(&low_job), "proofjobs-low");
    assert_eq!(template_class(&high_job), "proofjobs-high");

    let mut client = cluster.client().await;
    let high_done = wait_finished(&mut client, &high, Duration::from_secs(1200)).await.unwrap();
    assert_eq!(high_done.status, "completed", "{}\n{}", high_done.failure_cause, env.node_agent_log());
    let low_done = wait_finished(&mut client, &low, Duration::from_secs(1200)).await.unwrap();
    assert_eq!(low_done.status, "completed", "{}\n{}", low_done.failure_cause, env.node_agent_log());
    assert!(high_done.finished_at <= low_done.finished_at, "the high-priority proof went first");
    let failures: i64 = sqlx::query_scalar("SELECT coalesce(sum(failures), 0)::int8 FROM runner_groups WHERE proof_id = $1")
        .bind(&low)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(failures, 0, "the preemption was counted as a runner failure");
    let gpu_runners: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runners WHERE proof_id = $1 AND backend = 'kubernetes-pod' AND 'prove-core' = ANY(stages)",
    )
    .bind(&low)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!(gpu_runners >= 2, "the preempted pod was replaced: {gpu_runners} GPU runner pods");
    assert_eq!(env.job_names(&low).len(), 2, "one Job per stage group, no retry Job: {:?}", env.job_names(&low));

    for (id, key) in [(&low, &batch_key), (&high, &urgent_key)] {
        let mut owner = cluster.client_with_key(Some(key)).await;
        let path = cluster.dir.path().join(format!("{id}.proof"));
        download_and_verify(&mut owner, id, &path).await;
    }
    db.close().await;
    cluster.shutdown().await;
}
