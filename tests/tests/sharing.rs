//! Sharing a cluster between requesters, on the real control plane (tests/k8s/cluster.sh): the
//! proofs-in-flight quota, fair share of capped GPU slots, and the GPU runner quota, as the api
//! and `kubectl get jobs` show them. The work is inserted directly (no proving): what is under
//! test is who gets a GPU Job, not what the Job does. No node agent runs, so GPU pods stay
//! unschedulable and hold their slots until their proof ends.

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
