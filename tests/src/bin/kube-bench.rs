//! kube-bench: the Kubernetes backend's dispatch cost against the real control plane.
//!
//! Proofs are made stage-ready by inserting them (each with its first task pending) straight into
//! a fresh database, as the api does; the dispatcher (its own process, least-privilege account)
//! creates their Jobs; a watch in this process sees each Job appear. No nodes exist, so every
//! Job's pod stays Pending and the proofs stay in flight. Printed:
//! - stage-ready → Job created latency under light load (proofs arriving 10/s), p50/p99, next to
//!   the floor: the same Job created directly with kube-rs, one at a time;
//! - Jobs/s sustained when `--proofs` arrive at once;
//! - the dispatcher's CPU while the burst settles, then with all of them in flight and nothing
//!   changing, and its RSS.
//!
//!   eval "$(scripts/services.sh start)"; eval "$(tests/k8s/cluster.sh start)"
//!   $CARGO_TARGET_DIR/release/kube-bench --proofs 1000

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::{
    api::{DeleteParams, PostParams},
    runtime::{watcher, WatchStreamExt},
    Api,
};
use proofjobs_dispatcher::{
    backend::{RunnerSpec, Share},
    kubernetes::{
        job_spec::{build_job, job_name, JobSettings},
        profiles::StageProfiles,
    },
};
use proofjobs_pipeline::stage::Stage;
use proofjobs_tests::{bin, insert_stage_ready_proof, kube_env::*, redis_url, Proc, TestDb};
use sp1_prover_types::TaskType;

const LIGHT_LOAD_PROOFS: usize = 100;
const BASELINE_CREATES: usize = 100;
const SETTLE_SECS: u64 = 60;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut proofs = 1000usize;
    let mut argv = std::env::args().skip(1);
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--proofs" => proofs = argv.next().and_then(|v| v.parse().ok()).expect("--proofs N"),
            other => anyhow::bail!("unknown argument {other} (usage: kube-bench [--proofs N])"),
        }
    }
    anyhow::ensure!(proofs > LIGHT_LOAD_PROOFS, "--proofs must exceed {LIGHT_LOAD_PROOFS}");
    let db = TestDb::create().await?;
    let options = KubeOptions { pools: Vec::new(), capacity_wait_secs: 36_000, ..Default::default() };
    let env = KubeEnv::create(&db.url, &db.runner_url().await, &redis_url(), &options)?;
    let admin = kube::Client::try_default().await?;
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &env.namespace);

    // Floor: direct creates of the same Job spec, one at a time.
    let profiles = StageProfiles::default();
    let settings = JobSettings::for_tests(&env.namespace);
    let mut direct = Vec::new();
    for i in 0..BASELINE_CREATES {
        let proof_id = format!("baseline-{i}");
        let spec = RunnerSpec {
            runner_id: job_name(&proof_id, "execute", 0),
            proof_id,
            stages: vec![Stage::Execute],
            deadline_secs: 3600,
            share: Share { requester: "bench".into(), weight: 1, max_gpu_runners: None, priority: Default::default() },
            runner_token: None,
        };
        let job = build_job(&spec, &profiles.for_group(&spec.stages), &settings, false);
        let started = Instant::now();
        jobs.create(&PostParams::default(), &job).await?;
        direct.push(started.elapsed());
    }
    for i in 0..BASELINE_CREATES {
        jobs.delete(&job_name(&format!("baseline-{i}"), "execute", 0), &DeleteParams::background()).await?;
    }

    // Jobs as this process's watch sees them appear.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = tokio::spawn({
        let seen = seen.clone();
        let stream = watcher(jobs.clone(), watcher::Config::default().labels("app.kubernetes.io/managed-by=proofjobs"))
            .applied_objects()
            .default_backoff();
        async move {
            futures::pin_mut!(stream);
            while let Some(Ok(job)) = stream.next().await {
                let name = job.metadata.name.unwrap_or_default();
                seen.lock().unwrap().entry(name).or_insert_with(Instant::now);
            }
        }
    });

    let mut dispatcher_env = env.dispatcher_env(&options);
    // KUBE_BENCH_DISPATCHER_LOG=proofjobs_dispatcher=debug shows every pass in the dispatcher's log.
    dispatcher_env.push(("RUST_LOG", std::env::var("KUBE_BENCH_DISPATCHER_LOG").unwrap_or_else(|_| "warn".into())));
    dispatcher_env.push(("DATABASE_URL", db.url.clone()));
    let env_refs: Vec<(&str, String)> = dispatcher_env.iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut dispatcher = Proc::spawn(&bin("proofjobs-dispatcher"), &[], &env_refs, env.dir.path().join("dispatcher.log"));
    let pid = dispatcher.child.id();
    let state = db.db().await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let insert = |i: usize| {
        let state = state.clone();
        async move {
            let id = format!("bench-{i}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            insert_stage_ready_proof(&state, &id, Stage::Execute, TaskType::ExecuteOnly, 1).await.unwrap();
            (job_name(&id, "execute", 0), Instant::now())
        }
    };

    // Light load: 10 proofs/s.
    let mut ready = Vec::new();
    for i in 0..LIGHT_LOAD_PROOFS {
        ready.push(insert(i).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let light = wait_all(&seen, &ready, Duration::from_secs(300)).await;

    // Burst: the rest at once.
    let cpu_before = cpu_secs(pid);
    let burst_start = Instant::now();
    let burst: Vec<(String, Instant)> = futures::stream::iter(LIGHT_LOAD_PROOFS..proofs).map(insert).buffer_unordered(16).collect().await;
    let burst_latencies = wait_all(&seen, &burst, Duration::from_secs(1800)).await;
    let last_seen = burst.iter().filter_map(|(name, _)| seen.lock().unwrap().get(name).copied()).max().unwrap();
    let burst_secs = (last_seen - burst_start).as_secs_f64();
    let cpu_burst = cpu_secs(pid) - cpu_before;

    // Settling: the scheduler marks every pod unschedulable, the dispatcher labels each Job
    // `waiting-for-capacity` and records an Event, once. Then steady state: every proof in
    // flight and nothing changing.
    let cpu_settle_start = cpu_secs(pid);
    tokio::time::sleep(Duration::from_secs(SETTLE_SECS)).await;
    let cpu_settle = cpu_secs(pid) - cpu_settle_start;
    let cpu_idle_start = cpu_secs(pid);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cpu_steady = (cpu_secs(pid) - cpu_idle_start) / 30.0;
    let (rss, hwm) = memory_mb(pid);
    let in_flight = state.count_active_proofs().await?;
    let job_count = jobs.list(&Default::default()).await?.items.len();

    println!("\nkube-bench: {proofs} execute-stage proofs, real kube-apiserver 1.34.2 on loopback, no nodes (pods stay Pending)\n");
    println!("| measure | proofjobs dispatcher | direct kube-rs create (floor) |");
    println!("|---|---|---|");
    println!("| stage-ready → Job created, 10 proofs/s, p50 | {} | {} |", ms(pct(&light, 50)), ms(pct(&direct, 50)));
    println!("| stage-ready → Job created, 10 proofs/s, p99 | {} | {} |", ms(pct(&light, 99)), ms(pct(&direct, 99)));
    println!(
        "| burst of {} at once: latency p50 / p99 | {} / {} | |",
        proofs - LIGHT_LOAD_PROOFS,
        ms(pct(&burst_latencies, 50)),
        ms(pct(&burst_latencies, 99))
    );
    println!(
        "| burst: Jobs/s sustained | {:.1} | {:.1} (sequential) |",
        burst.len() as f64 / burst_secs,
        BASELINE_CREATES as f64 / direct.iter().map(Duration::as_secs_f64).sum::<f64>()
    );
    println!(
        "| dispatcher CPU during the burst | {:.1} s for {} Jobs ({:.1} ms/Job) | |",
        cpu_burst,
        burst.len(),
        cpu_burst * 1000.0 / burst.len() as f64
    );
    println!("| dispatcher CPU, the {SETTLE_SECS} s after the burst (labels, Events) | {cpu_settle:.1} s | |");
    println!("| dispatcher CPU, {in_flight} proofs in flight, nothing changing | {:.1} % of a core | |", cpu_steady * 100.0);
    println!("| dispatcher RSS now / peak | {rss:.0} MB / {hwm:.0} MB | |");
    println!("| Jobs in the namespace | {job_count} | |");

    let kept = std::env::temp_dir().join("kube-bench-dispatcher.log");
    let _ = std::fs::copy(&dispatcher.log, &kept);
    println!("\ndispatcher log: {}", kept.display());
    watch.abort();
    dispatcher.kill();
    Ok(())
}

async fn wait_all(seen: &Mutex<HashMap<String, Instant>>, ready: &[(String, Instant)], timeout: Duration) -> Vec<Duration> {
    let started = Instant::now();
    loop {
        let latencies: Vec<Duration> = {
            let seen = seen.lock().unwrap();
            ready.iter().filter_map(|(name, at)| seen.get(name).map(|t| t.saturating_duration_since(*at))).collect()
        };
        if latencies.len() == ready.len() {
            return latencies;
        }
        assert!(started.elapsed() < timeout, "only {} of {} Jobs appeared", latencies.len(), ready.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pct(values: &[Duration], p: usize) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    v[((v.len() * p).div_ceil(100)).clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// user + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// (VmRSS, VmHWM) in MB.
fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}
