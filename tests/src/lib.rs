//! Shared test harness: a fresh database per test on the real PostgreSQL and Redis that
//! `scripts/services.sh` starts, the real api / dispatcher / task-runner / proofctl binaries as
//! processes, and the stock sp1-sdk verifier. Heavy proving tests take [`prover_lock`] so only one
//! SP1 prover runs at a time (two do not fit in 24 GiB).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use proofjobs_api::{
    auth::{Bearer, ProverClient},
    proto::{prover_service_client::ProverServiceClient, GetRequest, Proof},
};
use sp1_prover_types::cluster::cluster_service_client::ClusterServiceClient;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// An sp1-cluster `ClusterService` client that sends its key with every call.
pub type ClusterClient = ClusterServiceClient<InterceptedService<Channel, Bearer>>;

pub mod kube_env;

pub use proofjobs_guests::{fibonacci_n_for_cycles, FIBONACCI_ELF, MEMTRAFFIC_ELF};

/// Serialises the tests that run an SP1 prover.
pub async fn prover_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_env_filter("info,sqlx=warn").with_test_writer().try_init();
}

pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: these tests need the real services; run `eval \"$(scripts/services.sh start)\"` first (the README's test command does)")
    })
}

/// The directory holding the workspace's binaries (target/<profile>).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test binary>, or target/<profile>/<tool such as kube-bench>
    let dir = exe.parent().unwrap();
    if dir.ends_with("deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.is_file(), "{} is missing: build the workspace's binaries first (cargo build --release --workspace)", path.display());
    path
}

/// The recursion-key cache runners started by the tests use (they inherit PROOFJOBS_KEY_CACHE).
pub fn key_cache_dir() -> PathBuf {
    proofjobs_task_runner::provers::key_cache_root(std::env::var("PROOFJOBS_KEY_CACHE").ok().as_deref())
        .expect("these tests run with the key cache on; unset PROOFJOBS_KEY_CACHE=off")
}

/// Fills (first run) or verifies the key cache with `warm-keys`, so runners start warm.
pub fn warm_key_cache() -> PathBuf {
    let dir = key_cache_dir();
    let out = std::process::Command::new(bin("warm-keys")).env("PROOFJOBS_KEY_CACHE", &dir).output().unwrap();
    assert!(out.status.success(), "warm-keys failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    dir
}

/// A database of its own for one test, created on the shared server and migrated.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Result<TestDb> {
        let admin = required_env("DATABASE_URL");
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let pool = sqlx::PgPool::connect(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&pool).await?;
        pool.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
        let url = format!("{base}/{name}");
        let db = proofjobs_pipeline::state::Db::connect(&url, 4).await?;
        db.migrate().await?;
        db.pool().close().await;
        Ok(TestDb { url, name })
    }

    pub async fn db(&self) -> proofjobs_pipeline::state::Db {
        proofjobs_pipeline::state::Db::connect(&self.url, 4).await.unwrap()
    }

    /// This database's URL for a login role that is a member of `proofjobs_runner` (created on
    /// first use; roles are server-wide), as a deployment gives its runner pods.
    pub async fn runner_url(&self) -> String {
        let db = self.db().await;
        // Tests run side by side: a role another one created just now is as good.
        if let Err(e) = db.set_runner_login(RUNNER_LOGIN, RUNNER_PASSWORD, false).await {
            assert!(format!("{e:#}").contains("already exists"), "{e:#}");
        }
        db.close().await;
        let (scheme, rest) = self.url.split_once("://").unwrap();
        let host = rest.split_once('@').map(|(_, h)| h).unwrap_or(rest);
        format!("{scheme}://{RUNNER_LOGIN}:{RUNNER_PASSWORD}@{host}")
    }
}

/// The login role the tests' runners use.
pub const RUNNER_LOGIN: &str = "proofjobs_runner_login";
const RUNNER_PASSWORD: &str = "runner-test-password";

pub fn redis_url() -> String {
    required_env("REDIS_URL")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process that is killed (with its process group) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(program: &Path, args: &[&str], env: &[(&str, String)], log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Proc { child, log }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `grace` before killing.
    pub fn terminate(&mut self, grace: Duration) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// api + dispatcher (local backend) of a one-machine cluster, on a database of its own.
pub struct Cluster {
    pub db: TestDb,
    pub endpoint: String,
    pub store_url: String,
    pub api: Proc,
    pub dispatcher: Option<Proc>,
    /// Extra dispatcher environment (the Kubernetes backend's settings), kept for restarts.
    pub dispatcher_env: Vec<(&'static str, String)>,
    pub dir: tempfile::TempDir,
    /// An admin API key (requester `test-admin`) that [`Cluster::client`] sends.
    pub admin_key: String,
    /// The database as the runners reach it: a member of the `proofjobs_runner` role.
    pub runner_db_url: String,
}

impl Cluster {
    /// `store_url` None = Redis (the cluster default). `extra_api_env` tunes limits.
    pub async fn start(store_url: Option<String>, extra_api_env: &[(&str, String)]) -> Result<Cluster> {
        Cluster::start_with(store_url, extra_api_env, Vec::new()).await
    }

    /// As [`Cluster::start`], with extra dispatcher environment.
    pub async fn start_with(
        store_url: Option<String>,
        extra_api_env: &[(&str, String)],
        dispatcher_env: Vec<(&'static str, String)>,
    ) -> Result<Cluster> {
        Cluster::start_on(TestDb::create().await?, store_url, extra_api_env, dispatcher_env).await
    }

    /// As [`Cluster::start_with`], on a database made beforehand.
    pub async fn start_on(
        db: TestDb,
        store_url: Option<String>,
        extra_api_env: &[(&str, String)],
        dispatcher_env: Vec<(&'static str, String)>,
    ) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let store_url = store_url.unwrap_or_else(redis_url);
        let port = free_port();
        let mut env = vec![
            ("DATABASE_URL", db.url.clone()),
            ("PROOFJOBS_ARTIFACT_STORE", store_url.clone()),
            ("PROOFJOBS_API_ADDR", format!("127.0.0.1:{port}")),
        ];
        let endpoint = format!("http://127.0.0.1:{port}");
        // `{endpoint}` in a value stands for the api's own URL (the network API's public URL).
        env.extend(extra_api_env.iter().map(|(k, v)| (*k, v.replace("{endpoint}", &endpoint))));
        let api = Proc::spawn(&bin("proofjobs-api"), &[], &env, dir.path().join("api.log"));
        let runner_db_url = db.runner_url().await;
        let mut cluster =
            Cluster { db, runner_db_url, endpoint, store_url, api, dispatcher: None, dispatcher_env, dir, admin_key: String::new() };
        cluster.start_dispatcher();
        cluster.wait_ready().await?;
        // The api has migrated the database by the time it listens.
        cluster.admin_key = cluster.create_key("test-admin", true).await;
        Ok(cluster)
    }

    pub fn start_dispatcher(&mut self) {
        let mut env = vec![
            ("DATABASE_URL", self.db.url.clone()),
            // Runners connect as the restricted runner role, as a deployment's do.
            ("PROOFJOBS_RUNNER_DATABASE_URL", self.runner_db_url.clone()),
            ("PROOFJOBS_ARTIFACT_STORE", self.store_url.clone()),
            ("PROOFJOBS_TASK_RUNNER", bin("task-runner").display().to_string()),
            ("PROOFJOBS_LOG_DIR", self.dir.path().join("runners").display().to_string()),
        ];
        env.extend(self.dispatcher_env.iter().cloned());
        let n = std::fs::read_dir(self.dir.path()).map(|d| d.count()).unwrap_or(0);
        self.dispatcher = Some(Proc::spawn(&bin("proofjobs-dispatcher"), &[], &env, self.dir.path().join(format!("dispatcher-{n}.log"))));
    }

    pub fn kill_dispatcher(&mut self) {
        if let Some(mut d) = self.dispatcher.take() {
            d.kill();
        }
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A TCP connection, so the same wait serves a plaintext and a TLS api.
            if tokio::net::TcpStream::connect(self.endpoint.trim_start_matches("http://")).await.is_ok() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "api did not come up: {}", self.api.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A ProverService client with the admin key.
    pub async fn client(&self) -> ProverClient {
        self.client_with_key(Some(&self.admin_key)).await
    }

    /// A ProverService client that sends `key` (or no key at all).
    pub async fn client_with_key(&self, key: Option<&str>) -> ProverClient {
        ProverServiceClient::with_interceptor(self.channel().await, Bearer::new(key).unwrap()).max_decoding_message_size(64 << 20)
    }

    /// A ClusterService client that sends `key` (None: the admin key).
    pub async fn cluster_client(&self, key: Option<&str>) -> ClusterClient {
        let bearer = Bearer::new(Some(key.unwrap_or(&self.admin_key))).unwrap();
        ClusterServiceClient::with_interceptor(self.channel().await, bearer).max_decoding_message_size(64 << 20)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone()).unwrap().connect().await.unwrap()
    }

    /// A new API key for `requester` in this cluster's database.
    pub async fn create_key(&self, requester: &str, admin: bool) -> String {
        let db = self.db.db().await;
        let (_, key) = db.create_key(requester, admin, None, "test").await.unwrap();
        db.close().await;
        key
    }

    pub fn runner_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("runners")) {
            for entry in entries.flatten() {
                out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }
}

impl Cluster {
    /// Pids of runner processes still alive for this cluster.
    pub async fn live_runner_pids(&self) -> Vec<i32> {
        let db = self.db.db().await;
        let handles = db.runner_handles().await.unwrap();
        handles.iter().filter_map(|h| h.parse::<i32>().ok()).filter(|pid| pid_alive(*pid)).collect()
    }

    /// Stop the dispatcher and any runner it left (runners live in their own process groups).
    pub async fn shutdown(mut self) {
        self.kill_dispatcher();
        for pid in self.live_runner_pids().await {
            // SAFETY: signalling a process group we started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

/// Is `pid` a live (not zombie) task-runner?
pub fn pid_alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z'));
    running && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("task-runner"))
}

/// Store `bincode_bytes` under `id` the way an sp1-cluster client does: plain zstd, no checksum.
pub async fn put_like_sp1_cluster(conn: &mut redis::aio::MultiplexedConnection, id: &str, bincode_bytes: &[u8]) {
    let value = zstd::encode_all(bincode_bytes, 0).unwrap();
    redis::cmd("SET").arg(id).arg(value).query_async::<()>(conn).await.unwrap();
}

pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

pub fn fibonacci_stdin(n: u64) -> Vec<u8> {
    let mut stdin = sp1_sdk::SP1Stdin::new();
    stdin.write(&n);
    bincode::serialize(&stdin).unwrap()
}

/// Poll Get until the proof is terminal.
pub async fn wait_finished(client: &mut ProverClient, id: &str, timeout: Duration) -> Result<Proof> {
    let deadline = Instant::now() + timeout;
    loop {
        let proof = client.get(GetRequest { proof_id: id.to_string() }).await?.into_inner();
        if matches!(proof.status.as_str(), "completed" | "failed" | "cancelled") {
            return Ok(proof);
        }
        anyhow::ensure!(Instant::now() < deadline, "proof {id} still {} after {timeout:?}", proof.status);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Verify with the stock sp1-sdk verifier; also check that a tampered copy and a check against
/// another program's key are both rejected.
pub async fn verify_strictly(elf: &[u8], other_elf: &[u8], proof_path: &Path) -> Result<sp1_sdk::SP1ProofWithPublicValues> {
    use sp1_sdk::{Prover, ProvingKey};
    let proof = sp1_sdk::SP1ProofWithPublicValues::load(proof_path).context("loading the proof file")?;
    let client = sp1_sdk::ProverClient::builder().light().build().await;
    let pk = client.setup(elf.to_vec().into()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    client.verify(&proof, pk.verifying_key(), None).map_err(|e| anyhow::anyhow!("genuine proof rejected: {e}"))?;

    let mut tampered = proof.clone();
    let mut bytes = tampered.public_values.to_vec();
    anyhow::ensure!(!bytes.is_empty(), "proof has no public values to tamper with");
    bytes[0] ^= 1;
    tampered.public_values = sp1_sdk::SP1PublicValues::from(bytes.as_slice());
    anyhow::ensure!(client.verify(&tampered, pk.verifying_key(), None).is_err(), "a tampered proof was accepted");

    let other = client.setup(other_elf.to_vec().into()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(client.verify(&proof, other.verifying_key(), None).is_err(), "the proof verified against another program's key");
    Ok(proof)
}

/// An artifact store URL on the test Redis with an S3 tier (the server scripts/services.sh starts)
/// under a fresh prefix `<name>-<uuid>/` of the live-test bucket, spilling values over
/// `threshold` bytes; and that prefix.
pub fn spill_store_url(name: &str, threshold: usize) -> (String, String) {
    let endpoint = required_env("PROOFJOBS_S3_ENDPOINT");
    let prefix = format!("{name}-{}/", uuid::Uuid::now_v7().simple());
    let url = format!(
        "{}/?spill=s3://proofjobs-live-tests/{prefix}&spill_endpoint={endpoint}&spill_threshold={threshold}&spill_path_style=true",
        redis_url()
    );
    (url, prefix)
}

/// Waits (up to 10 min) until a shard of proof `id` is being proved; fails if the proof fails first.
pub async fn wait_for_shard_proving(client: &mut ProverClient, id: &str) {
    let started = Instant::now();
    loop {
        let p = client.get(proofjobs_api::proto::GetRequest { proof_id: id.to_string() }).await.unwrap().into_inner();
        if p.stages.iter().any(|s| s.stage == "prove-core" && s.running > 0) {
            return;
        }
        assert_ne!(p.status, "failed", "{}", p.failure_cause);
        assert!(started.elapsed() < Duration::from_secs(600), "no shard proving started");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Downloads proof `id` of the Fibonacci guest through GetProof into `path`, then
/// [`verify_strictly`]: the path every proof test ends on.
pub async fn download_and_verify(client: &mut ProverClient, id: &str, path: &Path) -> sp1_sdk::SP1ProofWithPublicValues {
    let request = proofjobs_api::proto::GetProofRequest { proof_id: id.to_string(), accept_url: false };
    let mut stream = client.get_proof(request).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    std::fs::write(path, bytes).unwrap();
    verify_strictly(FIBONACCI_ELF, MEMTRAFFIC_ELF, path).await.unwrap()
}

/// The Submit stream of a proof request: header, then program and stdin in one chunk each.
pub fn submit_messages(
    mode: &str,
    program: &[u8],
    stdin: &[u8],
    deadline: u64,
    cycle_limit: u64,
) -> Vec<proofjobs_api::proto::SubmitRequest> {
    use proofjobs_api::proto::{submit_request::Part, SubmitHeader, SubmitRequest};
    let mut messages = vec![SubmitRequest {
        part: Some(Part::Header(SubmitHeader {
            mode: mode.into(),
            deadline,
            cycle_limit,
            idempotency_key: String::new(),
            program_size: program.len() as u64,
            stdin_size: stdin.len() as u64,
            quote_id: String::new(),
        })),
    }];
    if !program.is_empty() {
        messages.push(SubmitRequest { part: Some(Part::ProgramChunk(program.to_vec())) });
    }
    if !stdin.is_empty() {
        messages.push(SubmitRequest { part: Some(Part::StdinChunk(stdin.to_vec())) });
    }
    messages
}

/// A proof made stage-ready without the api or a controller: its row plus `tasks` pending tasks
/// of `task_type` in `stage` (for dispatch tests and benchmarks that never run them). Returns
/// the tasks' ids.
pub async fn insert_stage_ready_proof(
    db: &proofjobs_pipeline::state::Db,
    id: &str,
    stage: proofjobs_pipeline::stage::Stage,
    task_type: sp1_prover_types::TaskType,
    tasks: usize,
) -> Result<Vec<String>> {
    insert_stage_ready_proof_of(db, "", id, stage, task_type, tasks).await
}

/// [`insert_stage_ready_proof`] for a proof of requester `owner`.
pub async fn insert_stage_ready_proof_of(
    db: &proofjobs_pipeline::state::Db,
    owner: &str,
    id: &str,
    stage: proofjobs_pipeline::stage::Stage,
    task_type: sp1_prover_types::TaskType,
    tasks: usize,
) -> Result<Vec<String>> {
    use proofjobs_pipeline::state::{NewProof, NewTask};
    let proof = NewProof {
        id: id.to_string(),
        mode: proofjobs_pipeline::stage::Mode::Core,
        program_artifact: format!("artifact_p_{id}"),
        stdin_artifact: format!("artifact_s_{id}"),
        proof_artifact: format!("artifact_o_{id}"),
        cycle_limit: None,
        deadline: chrono::Utc::now() + chrono::TimeDelta::hours(10),
        idempotency_key: None,
        requester: Vec::new(),
        owner: owner.to_string(),
        gas_limit: None,
        scheduled_by: None,
        stdin_private: false,
        quote_id: None,
    };
    let task = || NewTask {
        id: proofjobs_pipeline::ids::new_task_id(),
        task_type: task_type as i32,
        stage: Some(stage),
        inputs: vec![proof.program_artifact.clone(), proof.stdin_artifact.clone()],
        outputs: vec![proof.proof_artifact.clone()],
        parent_id: None,
        requester: String::new(),
    };
    let first = task();
    db.insert_proof(&proof, &first).await?;
    let mut ids = vec![first.id];
    for _ in 1..tasks {
        let next = task();
        db.submit_task(id, &next).await?;
        ids.push(next.id);
    }
    Ok(ids)
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Submit a proof over ProverService; the api's status on refusal.
pub async fn submit(cluster: &Cluster, mode: &str, program: &[u8], stdin: &[u8], deadline: u64) -> Result<String, tonic::Status> {
    submit_limited(cluster, mode, program, stdin, deadline, 0).await
}

pub async fn submit_limited(
    cluster: &Cluster,
    mode: &str,
    program: &[u8],
    stdin: &[u8],
    deadline: u64,
    cycle_limit: u64,
) -> Result<String, tonic::Status> {
    let mut client = cluster.client().await;
    client
        .submit(futures::stream::iter(submit_messages(mode, program, stdin, deadline, cycle_limit)))
        .await
        .map(|r| r.into_inner().proof_id)
}

/// As an sp1-cluster client would: upload a good program and a stdin that is not an SP1Stdin to
/// Redis, then ProofRequestCreate `proof_id`. The api cannot see the stdin is bad; the runner can.
pub async fn create_proof_with_undecodable_stdin(cluster: &Cluster, proof_id: &str) {
    use sp1_prover_types::cluster::ProofRequestCreateRequest;
    let mut conn = redis_connection().await;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let (program_id, stdin_id) = (format!("artifact_prog_{suffix}"), format!("artifact_stdin_{suffix}"));
    put_like_sp1_cluster(&mut conn, &program_id, &bincode::serialize(&FIBONACCI_ELF.to_vec()).unwrap()).await;
    put_like_sp1_cluster(&mut conn, &stdin_id, b"\xff\xff\xff\xff\xff\xff\xff\xffnot an SP1Stdin").await;
    cluster
        .cluster_client(None)
        .await
        .proof_request_create(ProofRequestCreateRequest {
            proof_id: proof_id.to_string(),
            program_artifact_id: program_id,
            stdin_artifact_id: stdin_id,
            options_artifact_id: Some("1".into()),
            deadline: now() + 600,
            ..Default::default()
        })
        .await
        .unwrap();
}
