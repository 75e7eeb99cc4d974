//! One pod's life on a fake node: start → report Running → exit or deletion → report the
//! terminal status → final delete.
//!
//! The node's watch loop owns one worker per pod UID and feeds it every new version of the pod
//! through a `watch` channel (`None` once the object is gone). The worker is the only writer of
//! that pod's status, which keeps the "never move a terminal pod back" rule local.

use backon::{ExponentialBuilder, Retryable};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::context::AgentContext;
use crate::pod::{self, EnvSources, Host, SpecError};
use crate::process::{self, Exit};
use crate::status::{self, Termination};

pub type PodRx = watch::Receiver<Option<Arc<Pod>>>;

const STATUS_ATTEMPTS: usize = 6;
const SHUTDOWN_STATUS_TIMEOUT: Duration = Duration::from_secs(3);

struct Worker {
    ctx: Arc<AgentContext>,
    node: String,
    namespace: String,
    name: String,
    uid: String,
    rx: PodRx,
    cancel: CancellationToken,
}

/// What ended the process.
enum Ending {
    Exited,
    /// The pod got a deletionTimestamp: graceful stop.
    Deleted,
    /// The object vanished (force delete): nobody to report to.
    Gone,
    /// The agent is shutting down.
    Shutdown,
}

pub async fn run(ctx: Arc<AgentContext>, node: String, rx: PodRx, cancel: CancellationToken) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    let w = Worker {
        ctx,
        node,
        namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        rx,
        cancel,
    };
    w.run(pod).await;
}

impl Worker {
    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    fn latest(&self) -> Option<Arc<Pod>> {
        self.rx.borrow().clone()
    }

    async fn run(mut self, pod: Arc<Pod>) {
        if status::is_terminal(&pod) {
            return self.finish_deletion().await;
        }
        let container = pod::first_container(&pod).cloned();
        let (cname, image) = container.as_ref().map(|c| (c.name.clone(), c.image.clone().unwrap_or_default())).unwrap_or_default();

        if status::is_deleting(&pod) || status::reported_started(&pod) {
            // Deleted before we started it, or started by a previous incarnation of the agent
            // whose process is gone: report it failed the way a kubelet reports a lost container.
            let why = if status::is_deleting(&pod) {
                "pod was deleted before its container started"
            } else {
                "the node agent restarted and lost this container's process"
            };
            let t = Termination {
                container: cname,
                image,
                exit_code: 137,
                reason: "ContainerStatusUnknown".into(),
                message: Some(why.into()),
                signal: None,
                pid: None,
                started_at: None,
                finished_at: Timestamp::now(),
                pod_reason: None,
            };
            self.write_terminal(&pod, &t).await;
            return self.finish_deletion().await;
        }

        let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
        if policy != "Never" {
            tracing::warn!(pod = %self.name, namespace = %self.namespace, policy,
                "restartPolicy is not Never; the node agent runs the container once (as Never)");
        }
        if pod.spec.as_ref().is_some_and(|s| s.containers.len() > 1 || s.init_containers.as_ref().is_some_and(|i| !i.is_empty())) {
            tracing::warn!(pod = %self.name, namespace = %self.namespace,
                "pod has more than one container; the node agent runs only the first");
        }

        // Translate the spec.
        let spec = match self.fetch_sources(&pod).await {
            Ok(sources) => {
                let host = Host { images: &self.ctx.images, base_env: &self.ctx.base_env, work_dir: &self.ctx.work_dir };
                pod::translate(&pod, &host, &sources)
            }
            Err(e) => Err(e),
        };
        // File volumes (ServiceAccount token, mounted ConfigMaps) are written before the start.
        let spec = match spec {
            Ok(mut s) => crate::volumes::materialize(&self.ctx.client, &pod, &self.ctx.work_dir).await.map(|mounts| {
                s.mounts = mounts;
                s
            }),
            Err(e) => Err(e),
        };
        let spec = match spec {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(pod = %self.name, namespace = %self.namespace, reason = err.reason(), "{}", err.message());
                let t = Termination {
                    container: cname,
                    image,
                    exit_code: err.exit_code(),
                    reason: err.reason().into(),
                    message: Some(err.message()),
                    signal: None,
                    pid: None,
                    started_at: None,
                    finished_at: Timestamp::now(),
                    pod_reason: Some(err.reason().into()),
                };
                self.write_terminal(&pod, &t).await;
                return self.finish_deletion().await;
            }
        };

        // Start it.
        let log_guard = self.ctx.logs.start(&self.namespace, &self.name, &spec.container);
        let mut proc = match process::spawn(&spec) {
            Ok(p) => p,
            Err(err) => {
                drop(log_guard);
                let code = process::spawn_error_code(&err);
                tracing::warn!(pod = %self.name, program = %spec.program.display(), %err, "start failed");
                let t = Termination {
                    container: spec.container.clone(),
                    image: spec.image.clone(),
                    exit_code: code,
                    reason: "StartError".into(),
                    message: Some(format!("{}: {err}", spec.program.display())),
                    signal: None,
                    pid: None,
                    started_at: None,
                    finished_at: Timestamp::now(),
                    pod_reason: None,
                };
                self.write_terminal(&pod, &t).await;
                return self.finish_deletion().await;
            }
        };
        tracing::info!(node = %self.node, pod = %self.name, namespace = %self.namespace, pid = proc.pid,
            program = %spec.program.display(), "container started");

        let latest = self.latest().unwrap_or_else(|| pod.clone());
        if !status::is_terminal(&latest) {
            let running = status::running(&latest, &spec.container, &spec.image, proc.pid, proc.started_at);
            self.patch_status(&latest, &running).await;
        }

        // Wait for the process, a deletion, or shutdown.
        let (exit, ending) = loop {
            tokio::select! {
                res = proc.wait() => break (res, Ending::Exited),
                _ = self.cancel.cancelled() => {
                    proc.signal_group(libc::SIGKILL);
                    break (proc.wait().await, Ending::Shutdown);
                }
                changed = self.rx.changed() => {
                    let current = if changed.is_ok() { self.latest() } else { None };
                    match current {
                        None => {
                            proc.signal_group(libc::SIGKILL);
                            break (proc.wait().await, Ending::Gone);
                        }
                        Some(p) if status::is_deleting(&p) => {
                            let grace = grace_period(&p, self.ctx.max_grace);
                            tracing::info!(pod = %self.name, grace_s = grace.as_secs(), "pod deleted: stopping its process");
                            proc.signal_group(libc::SIGTERM);
                            let res = tokio::select! {
                                res = proc.wait() => res,
                                _ = tokio::time::sleep(grace) => {
                                    proc.signal_group(libc::SIGKILL);
                                    proc.wait().await
                                }
                            };
                            break (res, Ending::Deleted);
                        }
                        Some(_) => {}
                    }
                }
            }
        };
        // Like a container, nothing outlives the main process.
        proc.signal_group(libc::SIGKILL);
        log_guard.finish();
        let finished_at = Timestamp::now();
        let exit = exit.unwrap_or_else(|err| {
            tracing::warn!(pod = %self.name, %err, "waiting for the process failed");
            Exit { code: 255, signal: None }
        });
        tracing::info!(node = %self.node, pod = %self.name, namespace = %self.namespace, exit_code = exit.code, "container exited");

        if matches!(ending, Ending::Gone) {
            return;
        }
        let t = Termination {
            container: spec.container.clone(),
            image: spec.image.clone(),
            exit_code: exit.code,
            reason: status::exit_reason(exit.code).into(),
            message: None,
            signal: exit.signal,
            pid: Some(proc.pid),
            started_at: Some(proc.started_at),
            finished_at,
            pod_reason: None,
        };
        let latest = self.latest().unwrap_or(pod);
        if matches!(ending, Ending::Shutdown) {
            // A node deleted from the API is a machine that vanished: it reports nothing, and
            // the pod GC marks its pods failed (DisruptionTarget), as in a real cluster.
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.ctx.client.clone());
            if matches!(nodes.get_opt(&self.node).await, Ok(None)) {
                return;
            }
            let _ = tokio::time::timeout(SHUTDOWN_STATUS_TIMEOUT, self.write_terminal(&latest, &t)).await;
            return;
        }
        self.write_terminal(&latest, &t).await;
        self.finish_deletion().await;
    }

    /// Reads the ConfigMaps and Secrets the container's env refers to.
    async fn fetch_sources(&self, pod: &Pod) -> Result<EnvSources, SpecError> {
        let Some(container) = pod::first_container(pod) else {
            return Ok(EnvSources::default());
        };
        let refs = pod::env_refs(container);
        let mut sources = EnvSources::default();
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        for name in refs.config_maps {
            let cm = retry(|| cms.get_opt(&name)).await.map_err(|e| SpecError::Config(format!("configmap {name:?}: {e}")))?;
            sources.config_maps.insert(name, cm.map(config_map_data));
        }
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        for name in refs.secrets {
            let s = retry(|| secrets.get_opt(&name)).await.map_err(|e| SpecError::Config(format!("secret {name:?}: {e}")))?;
            sources.secrets.insert(name, s.map(secret_data));
        }
        Ok(sources)
    }

    async fn write_terminal(&self, pod: &Pod, t: &Termination) {
        // The freshest view decides: never move a terminal pod back.
        let latest = self.latest();
        let current = latest.as_deref().unwrap_or(pod);
        if status::is_terminal(current) {
            return;
        }
        let st = status::terminated(current, t);
        self.patch_status(current, &st).await;
    }

    /// Strategic-merge patch of pods/status, retried on transient errors. Returns whether it
    /// was written.
    async fn patch_status(&self, pod: &Pod, st: &PodStatus) -> bool {
        let api = self.api();
        let body = status::patch_body(pod, st);
        let params = PatchParams::default();
        let patch = Patch::Strategic(&body);
        let patch = || api.patch_status(&self.name, &params, &patch);
        let written = patch
            .retry(api_backoff())
            .when(|err| !matches!(err, kube::Error::Api(s) if matches!(s.code, 400 | 404 | 409 | 422)))
            .notify(|err, _| tracing::warn!(pod = %self.name, %err, "pod status patch failed; retrying"))
            .await;
        match written {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                tracing::debug!(pod = %self.name, code = s.code, "pod gone or replaced; status not written");
                false
            }
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                tracing::error!(pod = %self.name, message = %s.message, "apiserver rejected the pod status");
                false
            }
            Err(_) => false,
        }
    }

    /// After the terminal status: wait for the pod's deletion and complete it with grace 0
    /// (the kubelet's final DELETE). Returns when the pod is gone or the agent stops.
    async fn finish_deletion(&mut self) {
        loop {
            match self.latest() {
                None => return,
                Some(p) if status::is_deleting(&p) => {
                    self.delete_now().await;
                    return;
                }
                Some(_) => {}
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                changed = self.rx.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn delete_now(&self) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(self.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        let api = self.api();
        let _ = (|| api.delete(&self.name, &dp))
            .retry(api_backoff())
            .when(|err| !matches!(err, kube::Error::Api(s) if s.code == 404 || s.code == 409))
            .notify(|err, _| tracing::warn!(pod = %self.name, %err, "final pod delete failed; retrying"))
            .await;
    }
}

/// The pod's grace period (deletion grace if set, else the spec's), capped at `max`.
pub fn grace_period(pod: &Pod, max: Duration) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0) as u64;
    Duration::from_secs(secs).min(max)
}

/// How calls that may meet a restarting apiserver are retried.
fn api_backoff() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_millis(6400))
        .with_max_times(STATUS_ATTEMPTS - 1)
}

/// Reads, retried unless the apiserver answered with a client error (a retry would repeat it).
async fn retry<T, F, Fut>(f: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    f.retry(api_backoff())
        .when(|err| !matches!(err, kube::Error::Api(s) if s.code < 500 && s.code != 429))
        .notify(|err, wait| tracing::debug!(%err, ?wait, "API read failed; retrying"))
        .await
}

pub fn config_map_data(cm: ConfigMap) -> std::collections::BTreeMap<String, String> {
    let mut data = cm.data.unwrap_or_default();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        data.entry(k).or_insert_with(|| String::from_utf8_lossy(&v.0).into_owned());
    }
    data
}

pub fn secret_data(s: Secret) -> std::collections::BTreeMap<String, String> {
    let mut data: std::collections::BTreeMap<String, String> =
        s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned())).collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        data.insert(k, v);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grace_is_capped_and_prefers_deletion_grace() {
        let max = Duration::from_secs(30);
        let p: Pod = serde_json::from_value(json!({"spec": {"containers": [], "terminationGracePeriodSeconds": 5}})).unwrap();
        assert_eq!(grace_period(&p, max), Duration::from_secs(5));
        let p: Pod = serde_json::from_value(json!({"spec": {"containers": [], "terminationGracePeriodSeconds": 600}})).unwrap();
        assert_eq!(grace_period(&p, max), max);
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"deletionGracePeriodSeconds": 0},
            "spec": {"containers": [], "terminationGracePeriodSeconds": 20}
        }))
        .unwrap();
        assert_eq!(grace_period(&p, max), Duration::ZERO);
        let p: Pod = serde_json::from_value(json!({"spec": {"containers": []}})).unwrap();
        assert_eq!(grace_period(&p, max), max);
    }

    // --- Whole-worker scenarios against a mocked apiserver (tower-test). ---

    use crate::images::ImageMap;
    use crate::logs::LogRegistry;
    use http_body_util::BodyExt;
    use hyper::{Request, Response};
    use kube::client::Body;
    use tower_test::mock::{self, Handle};

    type ApiHandle = Handle<Request<Body>, Response<Body>>;

    fn ctx(work_dir: &std::path::Path, images: ImageMap) -> (Arc<AgentContext>, ApiHandle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let ctx = AgentContext {
            client: kube::Client::new(service, "default"),
            images,
            base_env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            work_dir: work_dir.to_path_buf(),
            logs: LogRegistry::new(work_dir.join("logs")),
            log_port: 10250,
            max_grace: Duration::from_secs(30),
            lease_interval: Duration::from_secs(10),
            ready_interval: Duration::from_secs(30),
        };
        (Arc::new(ctx), handle)
    }

    fn test_pod(container: serde_json::Value, grace: i64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "uid-1"},
            "spec": {"nodeName": "cpu-1", "restartPolicy": "Never", "terminationGracePeriodSeconds": grace,
                     "containers": [container]},
            "status": {"phase": "Pending"}
        }))
        .unwrap()
    }

    /// Next request: (method, path+query, JSON body); answers 200 with `reply`.
    async fn expect(handle: &mut ApiHandle, reply: &Pod) -> (String, String, serde_json::Value) {
        let (req, send) =
            tokio::time::timeout(Duration::from_secs(10), handle.next_request()).await.expect("a request in time").expect("a request");
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        send.send_response(Response::builder().status(200).body(Body::from(serde_json::to_vec(reply).unwrap())).unwrap());
        (method, uri, body)
    }

    fn with_status(pod: &Pod, status: &serde_json::Value) -> Pod {
        let mut p = pod.clone();
        p.status = Some(serde_json::from_value(status.clone()).unwrap());
        p
    }

    fn deleting(pod: &Pod) -> Pod {
        let mut p = pod.clone();
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
        p
    }

    #[tokio::test]
    async fn runs_process_reports_exit_and_finalizes_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, mut api) = ctx(dir.path(), ImageMap::default());
        let pod = test_pod(json!({"name": "c", "image": "unmapped", "command": ["/bin/sh", "-c", "echo hello-$HOSTNAME; exit 3"]}), 30);
        let (tx, rx) = watch::channel(Some(Arc::new(pod.clone())));
        let task = tokio::spawn(run(ctx, "cpu-1".into(), rx, CancellationToken::new()));

        let (method, uri, body) = expect(&mut api, &pod).await;
        assert_eq!(method, "PATCH");
        assert!(uri.starts_with("/api/v1/namespaces/ns/pods/p/status"), "{uri}");
        assert_eq!(body["metadata"]["uid"], "uid-1");
        assert_eq!(body["status"]["phase"], "Running");
        let running = with_status(&pod, &body["status"]);
        tx.send_replace(Some(Arc::new(running.clone())));

        let (method, _, body) = expect(&mut api, &running).await;
        assert_eq!(method, "PATCH");
        assert_eq!(body["status"]["phase"], "Failed");
        let term = &body["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(term["exitCode"], 3);
        assert_eq!(term["reason"], "Error");
        let log = std::fs::read_to_string(dir.path().join("logs/ns_p_c.log")).unwrap();
        assert_eq!(log, "hello-p\n");

        // The Job controller (or anyone) deletes the pod: the worker completes it with grace 0.
        let failed = with_status(&running, &body["status"]);
        tx.send_replace(Some(Arc::new(deleting(&failed))));
        let (method, uri, body) = expect(&mut api, &failed).await;
        assert_eq!(method, "DELETE");
        assert!(uri.starts_with("/api/v1/namespaces/ns/pods/p"), "{uri}");
        assert_eq!(body["gracePeriodSeconds"], 0);
        assert_eq!(body["preconditions"]["uid"], "uid-1");
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn deletion_stops_the_process_with_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, mut api) = ctx(dir.path(), ImageMap::default());
        let pod = test_pod(json!({"name": "c", "image": "x", "command": ["/bin/sleep", "60"]}), 5);
        let (tx, rx) = watch::channel(Some(Arc::new(pod.clone())));
        let task = tokio::spawn(run(ctx, "cpu-1".into(), rx, CancellationToken::new()));

        let (_, _, body) = expect(&mut api, &pod).await;
        assert_eq!(body["status"]["phase"], "Running");
        let running = deleting(&with_status(&pod, &body["status"]));
        let started = std::time::Instant::now();
        tx.send_replace(Some(Arc::new(running.clone())));

        let (_, _, body) = expect(&mut api, &running).await;
        assert!(started.elapsed() < Duration::from_secs(4), "SIGTERM, not the grace timeout, must end sleep");
        assert_eq!(body["status"]["phase"], "Failed");
        let term = &body["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(term["exitCode"], 143);
        assert_eq!(term["signal"], 15);
        assert_eq!(body["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap()["status"], "False");

        let (method, _, body) = expect(&mut api, &running).await;
        assert_eq!(method, "DELETE");
        assert_eq!(body["gracePeriodSeconds"], 0);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn grace_timeout_escalates_to_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, mut api) = ctx(dir.path(), ImageMap::default());
        let pod =
            test_pod(json!({"name": "c", "image": "x", "command": ["/bin/sh", "-c", "trap '' TERM; echo up; sleep 60; sleep 60"]}), 1);
        let (tx, rx) = watch::channel(Some(Arc::new(pod.clone())));
        let task = tokio::spawn(run(ctx, "cpu-1".into(), rx, CancellationToken::new()));
        let (_, _, body) = expect(&mut api, &pod).await;
        let running = deleting(&with_status(&pod, &body["status"]));
        // Let the shell install its trap before the TERM arrives.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send_replace(Some(Arc::new(running.clone())));
        let (_, _, body) = expect(&mut api, &running).await;
        let term = &body["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(term["exitCode"], 137, "{body}");
        let (method, _, _) = expect(&mut api, &running).await;
        assert_eq!(method, "DELETE");
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn success_and_unmapped_image() {
        let dir = tempfile::tempdir().unwrap();
        let true_bin = if std::path::Path::new("/bin/true").exists() { "/bin/true" } else { "/usr/bin/true" };
        let images = ImageMap::parse(&[format!("tools/true={true_bin}")]).unwrap();
        let (ctx, mut api) = ctx(dir.path(), images);

        // Mapped image, exit 0 → Succeeded.
        let pod = test_pod(json!({"name": "c", "image": "tools/true:1"}), 30);
        let (tx, rx) = watch::channel(Some(Arc::new(pod.clone())));
        let task = tokio::spawn(run(ctx.clone(), "cpu-1".into(), rx, CancellationToken::new()));
        let (_, _, body) = expect(&mut api, &pod).await;
        assert_eq!(body["status"]["phase"], "Running");
        let (_, _, body) = expect(&mut api, &pod).await;
        assert_eq!(body["status"]["phase"], "Succeeded");
        assert_eq!(body["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "Completed");
        tx.send_replace(None); // pod gone
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();

        // Unknown image → Failed 127 ImageNotMapped, without ever running.
        let pod = test_pod(json!({"name": "c", "image": "nobody/knows:1"}), 30);
        let (tx, rx) = watch::channel(Some(Arc::new(pod.clone())));
        let task = tokio::spawn(run(ctx, "cpu-1".into(), rx, CancellationToken::new()));
        let (_, _, body) = expect(&mut api, &pod).await;
        assert_eq!(body["status"]["phase"], "Failed");
        assert_eq!(body["status"]["reason"], "ImageNotMapped");
        assert_eq!(body["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 127);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[test]
    fn object_data_decoding() {
        let cm: ConfigMap = serde_json::from_value(json!({"data": {"a": "1"}, "binaryData": {"b": "aGk="}})).unwrap();
        let d = config_map_data(cm);
        assert_eq!(d["a"], "1");
        assert_eq!(d["b"], "hi");
        let s: Secret = serde_json::from_value(json!({"data": {"token": "czNjcmV0"}})).unwrap();
        assert_eq!(secret_data(s)["token"], "s3cret");
    }
}
