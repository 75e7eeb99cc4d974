//! The Kubernetes side of the harness: a namespace of its own on the real control plane that
//! `tests/k8s/cluster.sh` starts, the dispatcher's least-privilege ServiceAccount from
//! `manifests/base/dispatcher-rbac.yaml` (the dispatcher runs with that account's token, not as admin),
//! the runner Secret, and a node agent playing the cpu and gpu pools (gpu starting at zero).
//! Node names are cluster-wide, so Kubernetes tests take [`kube_lock`] and run one at a time.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{bin, required_env, Cluster, Proc};

/// The image name stage Jobs use in tests; the node agent maps it to the task-runner binary.
pub const RUNNER_IMAGE: &str = "proofjobs/task-runner:test";

pub async fn kube_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn admin_kubeconfig() -> PathBuf {
    PathBuf::from(std::env::var("KUBECONFIG").unwrap_or_else(|_| {
        panic!("KUBECONFIG is not set: these tests need the real control plane; run `eval \"$(tests/k8s/cluster.sh start)\"` first (scripts/test.sh does)")
    }))
}

/// `kubectl` as the admin, failing the test on error; returns stdout.
pub fn kubectl(args: &[&str]) -> String {
    kubectl_with(&admin_kubeconfig(), args, None)
}

pub fn kubectl_with(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let bin_dir = required_env("PROOFJOBS_K8S_BIN");
    let mut cmd = Command::new(Path::new(&bin_dir).join("kubectl"));
    cmd.args(args).env("KUBECONFIG", kubeconfig);
    let out = if let Some(input) = stdin {
        use std::io::Write;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    } else {
        cmd.output().unwrap()
    };
    assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Secret the api, dispatcher and runner pods read the store URLs from (the dispatcher's
/// default `--runner-secret`); runners get the database as the restricted runner role.
pub fn create_stores_secret(namespace: &str, db_url: &str, runner_db_url: &str, store_url: &str) {
    kubectl(&[
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        "proofjobs-stores",
        &format!("--from-literal=database-url={db_url}"),
        &format!("--from-literal=runner-database-url={runner_db_url}"),
        &format!("--from-literal=artifact-store={store_url}"),
    ]);
}

/// The names of a proof's stage Jobs in `namespace`, sorted.
pub fn proof_job_names(namespace: &str, proof_id: &str) -> Vec<String> {
    let out = kubectl(&[
        "-n",
        namespace,
        "get",
        "jobs",
        "-o",
        "name",
        "-l",
        &format!("proofjobs.io/proof={}", proofjobs_dispatcher::kubernetes::job_spec::proof_label(proof_id)),
    ]);
    let mut names: Vec<String> = out.lines().map(|l| l.trim_start_matches("job.batch/").to_string()).collect();
    names.sort();
    names
}

/// Starts the node agent with `args`, logging to `log`, and waits until it says it is ready
/// (or fails with its log when it exits or takes over 60 s).
pub fn spawn_node_agent(args: &[&str], log: PathBuf) -> Result<Proc> {
    let mut agent = Proc::spawn(&bin("node-agent"), args, &[], log.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("node-agent ready") {
            return Ok(agent);
        }
        anyhow::ensure!(Instant::now() < deadline, "node agent did not come up:\n{text}");
        if let Ok(Some(status)) = agent.child.try_wait() {
            anyhow::bail!("node agent exited with {status}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub struct KubeEnv {
    pub namespace: String,
    /// The dispatcher ServiceAccount's kubeconfig (token from the TokenRequest API).
    pub dispatcher_kubeconfig: PathBuf,
    pub node_agent: Option<Proc>,
    /// The node agent's node_up/node_down events (JSON lines).
    pub events: PathBuf,
    pub dir: tempfile::TempDir,
}

#[derive(Clone)]
pub struct KubeOptions {
    pub placement: &'static str,
    pub capacity_wait_secs: u64,
    /// Pools the node agent runs (`--pool` specs); empty: no node agent.
    pub pools: Vec<String>,
    pub idle_secs: u64,
    /// More dispatcher settings (caps).
    pub dispatcher_env: Vec<(&'static str, String)>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            placement: "per-stage",
            capacity_wait_secs: 600,
            pools: vec!["cpu:min=1,max=2,cpu=16,memory=64Gi".into(), "gpu:min=0,max=2,cpu=16,memory=64Gi,gpus=1".into()],
            idle_secs: 5,
            dispatcher_env: Vec::new(),
        }
    }
}

impl KubeEnv {
    /// A fresh namespace with the RBAC manifest applied and the stores Secret (runners get
    /// `runner_db_url`, a member of the restricted runner role).
    pub fn create(db_url: &str, runner_db_url: &str, store_url: &str, options: &KubeOptions) -> Result<KubeEnv> {
        let dir = tempfile::tempdir()?;
        let namespace = format!("pj-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        kubectl(&["create", "namespace", &namespace]);
        let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/base/dispatcher-rbac.yaml"))?;
        let manifest = manifest.replace("namespace: proofjobs", &format!("namespace: {namespace}"));
        kubectl_with(&admin_kubeconfig(), &["apply", "-f", "-"], Some(&manifest));
        create_stores_secret(&namespace, db_url, runner_db_url, store_url);
        let token = kubectl(&["-n", &namespace, "create", "token", "proofjobs-dispatcher", "--duration=2h"]);
        let admin = std::fs::read_to_string(admin_kubeconfig())?;
        let dispatcher_config: String = admin
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("token:") {
                    format!("    token: {}", token.trim())
                } else if l.contains("namespace: default") {
                    l.replace("namespace: default", &format!("namespace: {namespace}"))
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let dispatcher_kubeconfig = dir.path().join("dispatcher.kubeconfig");
        std::fs::write(&dispatcher_kubeconfig, dispatcher_config)?;
        let events = dir.path().join("node-events.jsonl");
        let mut env = KubeEnv { namespace, dispatcher_kubeconfig, node_agent: None, events, dir };
        if !options.pools.is_empty() {
            env.start_node_agent(options)?;
        }
        Ok(env)
    }

    fn start_node_agent(&mut self, options: &KubeOptions) -> Result<()> {
        let work = self.dir.path().join("nodes");
        let mut args: Vec<String> = vec![
            "--kubeconfig".into(),
            admin_kubeconfig().display().to_string(),
            "--work-dir".into(),
            work.display().to_string(),
            "--image-map".into(),
            format!("{RUNNER_IMAGE}={}", bin("task-runner").display()),
            "--scale-up-delay-ms".into(),
            "1000".into(),
            // A deleted Node is noticed (and its processes stopped) within 2 s.
            "--ready-secs".into(),
            "2".into(),
            "--idle-secs".into(),
            options.idle_secs.to_string(),
            "--events".into(),
            self.events.display().to_string(),
        ];
        for pool in &options.pools {
            args.push("--pool".into());
            args.push(pool.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.dir.path().join("node-agent.log");
        self.node_agent = Some(spawn_node_agent(&args, log)?);
        Ok(())
    }

    /// The dispatcher environment for the Kubernetes backend in this namespace.
    pub fn dispatcher_env(&self, options: &KubeOptions) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PROOFJOBS_BACKEND", "kubernetes".into()),
            ("KUBECONFIG", self.dispatcher_kubeconfig.display().to_string()),
            ("PROOFJOBS_NAMESPACE", self.namespace.clone()),
            ("PROOFJOBS_RUNNER_IMAGE", RUNNER_IMAGE.into()),
            ("PROOFJOBS_RUNNER_SERVICE_ACCOUNT", "proofjobs-runner".into()),
            ("PROOFJOBS_PLACEMENT", options.placement.into()),
            ("PROOFJOBS_CAPACITY_WAIT_SECS", options.capacity_wait_secs.to_string()),
            // Every emulated node runs on this machine, so they share one node-local key cache.
            ("PROOFJOBS_KEY_CACHE_HOST_PATH", crate::key_cache_dir().display().to_string()),
        ];
        env.extend(options.dispatcher_env.iter().cloned());
        env
    }

    /// api + Kubernetes-backed dispatcher on a database of their own, plus this environment.
    pub async fn cluster(options: &KubeOptions) -> Result<(Cluster, KubeEnv)> {
        // The database is made first so the runner Secret can name it.
        let probe = crate::TestDb::create().await?;
        let store = crate::redis_url();
        let env = KubeEnv::create(&probe.url, &probe.runner_url().await, &store, options)?;
        let cluster = Cluster::start_on(probe, Some(store), &[], env.dispatcher_env(options)).await?;
        Ok((cluster, env))
    }

    /// Jobs of a proof as `kubectl get jobs -L stage,progress` shows them.
    pub fn jobs_view(&self, proof_id: &str) -> String {
        kubectl(&[
            "-n",
            &self.namespace,
            "get",
            "jobs",
            "-l",
            &format!("proofjobs.io/proof={}", proofjobs_dispatcher::kubernetes::job_spec::proof_label(proof_id)),
            "-L",
            "proofjobs.io/stage,proofjobs.io/progress",
        ])
    }

    /// Job names of a proof.
    /// The reasons of the Events on an object, oldest first, once `expected` is among them (or
    /// after 15 s): Events are written a moment after what they tell.
    pub fn event_reasons(&self, object: &str, expected: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = kubectl(&[
                "-n",
                &self.namespace,
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={object}"),
                "--sort-by=.metadata.creationTimestamp",
                "-o",
                "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
            ]);
            let reasons: Vec<String> = out.lines().map(str::to_string).collect();
            if reasons.iter().any(|r| r == expected) || Instant::now() > deadline {
                return reasons;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn job_names(&self, proof_id: &str) -> Vec<String> {
        proof_job_names(&self.namespace, proof_id)
    }

    pub fn node_events(&self) -> Vec<serde_json::Value> {
        let Ok(file) = std::fs::File::open(&self.events) else { return Vec::new() };
        BufReader::new(file).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect()
    }

    pub fn node_agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node-agent.log")).unwrap_or_default()
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        // The node agent removes its nodes and stops its pods on SIGTERM.
        if let Some(mut agent) = self.node_agent.take() {
            agent.terminate(Duration::from_secs(20));
        }
        let _ = Command::new(Path::new(&std::env::var("PROOFJOBS_K8S_BIN").unwrap_or_default()).join("kubectl"))
            .args(["delete", "namespace", &self.namespace, "--wait=false"])
            .env("KUBECONFIG", admin_kubeconfig())
            .output()
            .context("deleting the test namespace");
    }
}
