//! The deployment as an operator applies it: `manifests/` rendered by kustomize, checked for the
//! security invariants the operator guide promises, accepted by the real apiserver (server-side
//! dry run of every overlay), and the `test` overlay applied for real: the api and two dispatcher
//! pods come up from those manifests (the node agent runs them as processes), the dispatchers
//! elect a leader on a Lease using their ServiceAccount token (in-cluster config), a proof sent
//! over gRPC to the api pod completes through stage Jobs, and killing the leader mid-proof hands
//! dispatching to another dispatcher without twin Jobs.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use proofjobs_api::proto::{prover_service_client::ProverServiceClient, GetRequest};
use proofjobs_dispatcher::kubernetes::{job_spec::job_name, profiles::StageProfiles};
use proofjobs_pipeline::state::Priority;
use proofjobs_tests::{kube_env::*, *};
use serde_json::Value;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// `kubectl kustomize <dir>` as JSON objects.
fn render(dir: &Path) -> Vec<Value> {
    let yaml = kubectl(&["kustomize", &dir.display().to_string()]);
    let json = kubectl_with(&admin_kubeconfig(), &["create", "--dry-run=client", "-o", "json", "-f", "-"], Some(&yaml));
    serde_json::Deserializer::from_str(&json).into_iter::<Value>().map(Result::unwrap).collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str().is_some_and(|n| n == name || n.starts_with(&format!("{name}-"))))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn ports(rule: &Value) -> BTreeSet<i64> {
    rule["ports"].as_array().into_iter().flatten().map(|p| p["port"].as_i64().unwrap()).collect()
}

/// What every overlay must keep, whatever an operator changes around it.
fn check_invariants(overlay: &str, objects: &[Value]) {
    let ns = of_kind(objects, "Namespace");
    assert_eq!(ns.len(), 1, "{overlay}: one Namespace");
    assert_eq!(ns[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted", "{overlay}: Pod Security restricted");
    assert!(of_kind(objects, "Secret").is_empty(), "{overlay}: Secrets are referenced, never shipped");
    let text = serde_json::to_string(objects).unwrap();
    assert!(!text.contains("postgres://") && !text.contains("redis://"), "{overlay}: a store URL is inlined");

    for workload in objects.iter().filter(|o| matches!(o["kind"].as_str(), Some("Deployment" | "StatefulSet"))) {
        let name = workload["metadata"]["name"].as_str().unwrap();
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{overlay}/{name}: runAsNonRoot");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{overlay}/{name}: seccomp");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{overlay}/{name}: allowPrivilegeEscalation");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{overlay}/{name}: readOnlyRootFilesystem");
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{overlay}/{name}: drop ALL");
            assert!(c["resources"]["requests"]["memory"].is_string(), "{overlay}/{name}: memory request");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{overlay}/{name}: memory limit");
        }
        for v in pod["volumes"].as_array().into_iter().flatten() {
            assert!(v.get("hostPath").is_none(), "{overlay}/{name}: hostPath volume");
            if let Some(empty) = v.get("emptyDir") {
                assert!(empty["sizeLimit"].is_string(), "{overlay}/{name}: emptyDir {} without sizeLimit", v["name"]);
            }
        }
    }

    let policies = of_kind(objects, "NetworkPolicy");
    let deny = named(objects, "NetworkPolicy", "default-deny");
    assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}), "{overlay}: default deny selects every pod");
    assert_eq!(deny["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert!(deny["spec"].get("ingress").is_none() && deny["spec"].get("egress").is_none());
    let runners = named(objects, "NetworkPolicy", "runners");
    assert_eq!(runners["spec"]["podSelector"]["matchExpressions"][0]["key"], "proofjobs.io/stage");
    assert!(runners["spec"].get("ingress").is_none(), "{overlay}: nothing may connect to runner pods");
    for rule in runners["spec"]["egress"].as_array().unwrap() {
        let p = ports(rule);
        let to_pod_identity = rule["to"][0]["ipBlock"]["cidr"] == "169.254.170.23/32";
        assert!(
            p == BTreeSet::from([5432, 6379, 443]) || (to_pod_identity && p == BTreeSet::from([80])),
            "{overlay}: runner egress {rule}"
        );
        for peer in rule["to"].as_array().unwrap() {
            if peer["ipBlock"]["cidr"] == "0.0.0.0/0" {
                assert_eq!(peer["ipBlock"]["except"], serde_json::json!(["169.254.169.254/32"]), "{overlay}: metadata endpoint open");
            }
        }
    }
    let api_policy = named(objects, "NetworkPolicy", "api");
    let ingress = api_policy["spec"]["ingress"].as_array().unwrap();
    assert!(ingress.iter().all(|r| ports(r) == BTreeSet::from([50051])), "{overlay}: api reachable on its port only");
    assert!(policies.len() >= 5, "{overlay}: {} NetworkPolicies", policies.len());

    let api = named(objects, "Deployment", "proofjobs-api");
    assert_eq!(api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"], 50051, "{overlay}: gRPC readiness");
    let pdb = named(objects, "PodDisruptionBudget", "proofjobs-api");
    assert_eq!(pdb["spec"]["selector"], api["spec"]["selector"], "{overlay}: the PDB covers the api");
    let dispatcher = named(objects, "Deployment", "proofjobs-dispatcher");
    assert_eq!(dispatcher["spec"]["replicas"], 2, "{overlay}: two dispatchers");
    let settings = named(objects, "ConfigMap", "proofjobs-dispatcher-settings");
    assert_ne!(settings["data"]["PROOFJOBS_LEADER_ELECT"], "false", "{overlay}: leader election is off");
    assert_eq!(settings["data"]["PROOFJOBS_BACKEND"], "kubernetes");
    let profiles = named(objects, "ConfigMap", "proofjobs-stage-profiles");
    StageProfiles::parse(profiles["data"]["stage-profiles.json"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{overlay}: shipped stage profiles do not load: {e:#}"));
    // The PriorityClasses under the names the dispatcher sets; high preempts, low never does.
    let class = |p: Priority| objects.iter().find(|o| o["kind"] == "PriorityClass" && o["metadata"]["name"] == p.class_name().unwrap());
    let (high, low) = (class(Priority::High).expect("proofjobs-high"), class(Priority::Low).expect("proofjobs-low"));
    assert!(high["value"].as_i64() > Some(0) && low["value"].as_i64() < Some(0), "{overlay}: priority values");
    assert_eq!(low["preemptionPolicy"], "Never", "{overlay}: low-priority pods never preempt");
    assert!(objects.iter().all(|o| o["globalDefault"] != true), "{overlay}: a PriorityClass is the cluster's default");
    let runner_account = named(objects, "ServiceAccount", "proofjobs-runner");
    assert_eq!(runner_account["automountServiceAccountToken"], false, "{overlay}: runner pods get no API token");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_overlay_keeps_the_invariants_and_the_apiserver_accepts_it() {
    init_tracing();
    let rendered: Vec<(&str, Vec<Value>)> =
        ["eks", "test", "trial"].into_iter().map(|o| (o, render(&manifests().join("overlays").join(o)))).collect();
    for (overlay, objects) in &rendered {
        check_invariants(overlay, objects);
    }
    let replicas = |objects: &[Value]| named(objects, "Deployment", "proofjobs-api")["spec"]["replicas"].as_i64().unwrap();
    assert!(replicas(&rendered[0].1) >= 2 && replicas(&rendered[2].1) >= 2, "the api runs at least two replicas outside the test overlay");
    assert!(of_kind(&rendered[0].1, "StatefulSet").is_empty(), "eks: no in-cluster stores");
    let redis = named(&rendered[2].1, "StatefulSet", "proofjobs-redis");
    let args = redis["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("\"--maxmemory-policy\",\"noeviction\"") && args.contains("--maxmemory\""), "trial redis: {args}");
    let cuda = named(&rendered[0].1, "ConfigMap", "proofjobs-stage-profiles")["data"]["stage-profiles.json"].as_str().unwrap();
    let eks_profiles = StageProfiles::parse(cuda).unwrap();
    assert!(
        eks_profiles.get(proofjobs_pipeline::stage::Stage::ProveCore).image.as_deref().is_some_and(|i| i.contains("task-runner-cuda")),
        "eks: GPU stages run the CUDA image"
    );
    let eks_settings = named(&rendered[0].1, "ConfigMap", "proofjobs-dispatcher-settings");
    assert!(
        eks_settings["data"]["PROOFJOBS_RUNNER_ENV"].as_str().is_some_and(|v| v.split(',').any(|kv| kv == "PROOFJOBS_PROVER=cuda")),
        "eks: every runner is told the proof is proved on GPUs"
    );

    // Server-side dry run: every object passes the apiserver's validation and admission.
    let _k = kube_lock().await;
    let ns = kubectl(&["get", "namespace", "proofjobs", "--ignore-not-found", "-o", "name"]);
    if ns.trim().is_empty() {
        kubectl(&["create", "namespace", "proofjobs"]);
    }
    for (overlay, _) in &rendered {
        let dir = manifests().join("overlays").join(overlay);
        let out = kubectl(&["apply", "--dry-run=server", "-k", &dir.display().to_string()]);
        assert!(out.contains("deployment.apps/proofjobs-dispatcher created (server dry run)"), "{overlay}:\n{out}");
    }
    // The operator pod for API keys (manifests/admin) is admitted under Pod Security `restricted`,
    // which the namespace enforces.
    kubectl(&["label", "namespace", "proofjobs", "pod-security.kubernetes.io/enforce=restricted", "--overwrite"]);
    let admin_pod = manifests().join("admin").join("proofctl-pod.yaml");
    let out = kubectl(&["apply", "--dry-run=server", "-f", &admin_pod.display().to_string()]);
    assert!(out.contains("pod/proofjobs-admin created (server dry run)"), "{out}");
    kubectl(&["delete", "namespace", "proofjobs", "--wait=false"]);
}

#[test]
fn a_bad_stage_profile_stops_the_dispatcher_at_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stage-profiles.json");
    std::fs::write(&path, r#"{"prove-core": {"cpu": "8", "memory": "48 gigs", "gpus": 1}}"#).unwrap();
    let out = std::process::Command::new(bin("proofjobs-dispatcher"))
        .env_clear()
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("PROOFJOBS_BACKEND", "kubernetes")
        .env("PROOFJOBS_STAGE_PROFILES", &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("prove-core.memory") && stderr.contains("48 gigs"), "{stderr}");
}

/// A Deployment's pods that run (by the node agent's status), by name.
fn running_pods(namespace: &str, app: &str) -> Vec<String> {
    let out = kubectl(&[
        "-n",
        namespace,
        "get",
        "pods",
        "-l",
        &format!("app.kubernetes.io/name={app}"),
        "--field-selector",
        "status.phase=Running",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
    ]);
    out.lines().map(str::to_string).collect()
}

/// The Lease's holder and transitions.
fn lease(namespace: &str) -> Option<(String, i64)> {
    let out = kubectl(&["-n", namespace, "get", "lease", "proofjobs-dispatcher", "--ignore-not-found", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).ok()?;
    Some((v["spec"]["holderIdentity"].as_str().unwrap_or("").to_string(), v["spec"]["leaseTransitions"].as_i64().unwrap_or(0)))
}

fn wait_for<T>(what: &str, timeout: Duration, diagnostics: impl Fn() -> String, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} not within {timeout:?}\n{}", diagnostics());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_overlay_runs_a_proof_and_survives_losing_its_leader() {
    init_tracing();
    let _prover = prover_lock().await;
    let _k = kube_lock().await;
    // Pods inherit the node agent's HOME: a kubeconfig there would be used instead of the
    // in-cluster config this test is about.
    let home = std::env::var("HOME").unwrap_or_default();
    assert!(!Path::new(&home).join(".kube/config").exists(), "{home}/.kube/config would hide in-cluster config");

    // The operator's steps: namespace, the stores Secret, `kubectl apply -k` (an overlay of the
    // test overlay that only renames the namespace, so runs do not collide).
    let db = TestDb::create().await.unwrap();
    let namespace = format!("pj-deploy-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dir = tempfile::tempdir().unwrap();
    let overlay = pathdiff(&manifests().join("overlays/test").canonicalize().unwrap(), dir.path());
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {namespace}\nresources:\n  - {overlay}\n"),
    )
    .unwrap();
    kubectl(&["create", "namespace", &namespace]);
    create_stores_secret(&namespace, &db.url, &db.runner_url().await, &redis_url());
    let agent = NodeAgent::start(dir.path());
    let applied = kubectl(&["apply", "-k", &dir.path().display().to_string()]);
    let diagnostics = || {
        format!(
            "{}\n{}\n{}",
            kubectl(&["-n", &namespace, "get", "pods,jobs,lease", "-o", "wide"]),
            agent.logs_of(&namespace, "proofjobs-dispatcher"),
            agent.log()
        )
    };
    assert!(applied.contains("deployment.apps/proofjobs-api created"), "{applied}");

    // Both Deployments come up and one dispatcher leads.
    let api_pods = wait_for("the api pod", Duration::from_secs(90), diagnostics, || {
        Some(running_pods(&namespace, "proofjobs-api")).filter(|p| p.len() == 1)
    });
    let dispatchers = wait_for("two dispatcher pods", Duration::from_secs(90), diagnostics, || {
        Some(running_pods(&namespace, "proofjobs-dispatcher")).filter(|p| p.len() == 2)
    });
    let (leader, _) = wait_for("a Lease holder", Duration::from_secs(60), diagnostics, || lease(&namespace).filter(|(h, _)| !h.is_empty()));
    let leader_pod = dispatchers.iter().find(|p| leader.starts_with(&format!("{p}_"))).cloned();
    let leader_pod = leader_pod.unwrap_or_else(|| panic!("Lease holder {leader} is none of {dispatchers:?}\n{}", diagnostics()));

    // The api pod answers the standard gRPC health check, then takes a proof.
    let endpoint = "http://127.0.0.1:50051".to_string();
    let channel = wait_for_async_channel(&endpoint, &diagnostics).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "api {api_pods:?} not serving");
    // The api runs as the manifests say: API keys required. A keyless call is refused; a key made
    // the way the operator guide says (against the database) is accepted.
    let mut keyless = ProverServiceClient::new(channel.clone());
    let refused = keyless.list(proofjobs_api::proto::ListRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    let keys = db.db().await;
    let (_, key) = keys.create_key("deploy-test", false, None, "deploy test").await.unwrap();
    keys.close().await;
    let mut client = ProverServiceClient::with_interceptor(channel, proofjobs_api::auth::Bearer::new(Some(&key)).unwrap())
        .max_decoding_message_size(64 << 20);
    let n = fibonacci_n_for_cycles(100_000);
    let submitted = client.submit(futures::stream::iter(submit_messages("core", FIBONACCI_ELF, &fibonacci_stdin(n), 0, 0))).await.unwrap();
    let id = submitted.into_inner().proof_id;
    let label = format!("proofjobs.io/proof={}", proofjobs_dispatcher::kubernetes::job_spec::proof_label(&id));
    let jobs = || proof_job_names(&namespace, &id);

    // Mid-proof, once the leader has created the first Job, kill it (SIGKILL: no release).
    wait_for("the first stage Job", Duration::from_secs(60), diagnostics, || Some(()).filter(|_| !jobs().is_empty()));
    let pid: i32 = leader.rsplit_once('_').unwrap().1.parse().unwrap();
    // SAFETY: signalling a process of this test's own node agent.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "leader process {pid} of {leader_pod}");
    let killed_at = Instant::now();
    // The standby, or the pod the ReplicaSet starts in the killed one's place, whichever asks
    // first once the Lease has expired.
    let (new_leader, transitions) = wait_for("another dispatcher taking the Lease", Duration::from_secs(60), diagnostics, || {
        lease(&namespace).filter(|(h, _)| !h.is_empty() && !h.starts_with(&format!("{leader_pod}_")))
    });
    let failover = killed_at.elapsed();
    println!("leader {leader} killed; {new_leader} took over after {:.1} s (lease transitions {transitions})", failover.as_secs_f64());
    assert!(transitions >= 1);

    let started = Instant::now();
    let proof = loop {
        let p = client.get(GetRequest { proof_id: id.clone() }).await.unwrap().into_inner();
        if matches!(p.status.as_str(), "completed" | "failed" | "cancelled") {
            break p;
        }
        assert!(started.elapsed() < Duration::from_secs(900), "proof did not finish\n{}", diagnostics());
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert_eq!(proof.status, "completed", "{}\n{}", proof.failure_cause, diagnostics());
    let expected: Vec<String> = {
        let mut v = vec![job_name(&id, "execute", 0), job_name(&id, "setup-prove-core", 0)];
        v.sort();
        v
    };
    assert_eq!(jobs(), expected, "twin or retried Jobs across the failover");
    // The settings ConfigMap reached the runners: PROOFJOBS_RUNNER_ENV, comma-separated.
    let env = kubectl(&["-n", &namespace, "get", "job", &expected[0], "-o", "jsonpath={.spec.template.spec.containers[0].env}"]);
    assert!(env.contains(r#"{"name":"PROOFJOBS_PROVER","value":"cpu"}"#) && env.contains(r#"{"name":"RUST_LOG","value":"info"}"#), "{env}");
    println!("{}", kubectl(&["-n", &namespace, "get", "jobs", "-l", &label, "-L", "proofjobs.io/stage,proofjobs.io/progress"]));

    let path = dir.path().join("deployed.proof");
    download_and_verify(&mut client, &id, &path).await;

    // The killed leader's pod was replaced by its ReplicaSet and stands by.
    wait_for("a replacement dispatcher pod", Duration::from_secs(60), diagnostics, || {
        Some(running_pods(&namespace, "proofjobs-dispatcher")).filter(|p| p.len() == 2 && !p.contains(&leader_pod))
    });
    kubectl(&["delete", "namespace", &namespace, "--wait=false"]);
    drop(agent);
}

async fn wait_for_async_channel(endpoint: &str, diagnostics: &impl Fn() -> String) -> tonic::transport::Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(endpoint.to_string()).unwrap().connect().await {
            return channel;
        }
        assert!(Instant::now() < deadline, "the api pod does not answer on {endpoint}\n{}", diagnostics());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `target` relative to `base` (kustomize refuses absolute resource paths).
fn pathdiff(target: &Path, base: &Path) -> String {
    let base = base.canonicalize().unwrap();
    let common = target.ancestors().find(|a| base.starts_with(a)).unwrap();
    let ups = base.strip_prefix(common).unwrap().components().count();
    let mut rel = PathBuf::new();
    for _ in 0..ups {
        rel.push("..");
    }
    rel.join(target.strip_prefix(common).unwrap()).display().to_string()
}

/// The node agent with the three images mapped to the workspace's binaries.
struct NodeAgent {
    proc: Proc,
    work: PathBuf,
}

impl NodeAgent {
    fn start(dir: &Path) -> NodeAgent {
        let work = dir.join("nodes");
        let map = |image: &str, binary: &str| format!("{image}={}", bin(binary).display());
        let args = [
            "--kubeconfig".to_string(),
            admin_kubeconfig().display().to_string(),
            "--work-dir".into(),
            work.display().to_string(),
            "--image-map".into(),
            map("proofjobs/api", "proofjobs-api"),
            "--image-map".into(),
            map("proofjobs/dispatcher", "proofjobs-dispatcher"),
            "--image-map".into(),
            map("proofjobs/task-runner", "task-runner"),
            "--pool".into(),
            "cpu:min=1,max=1,cpu=32,memory=96Gi".into(),
            "--ready-secs".into(),
            "2".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = spawn_node_agent(&args, dir.join("node-agent.log")).unwrap();
        NodeAgent { proc, work }
    }

    fn log(&self) -> String {
        let text = self.proc.log_text();
        text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The tails of the logs of a Deployment's pods (the node agent's log files).
    fn logs_of(&self, namespace: &str, prefix: &str) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.work.join("logs")).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{namespace}_{prefix}")) {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {name}\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
            }
        }
        out
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(20));
    }
}
