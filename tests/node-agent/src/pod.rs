//! Pod spec → local process spec.
//!
//! This is the "container runtime" of the fake kubelet, minus the side effects: it decides which
//! binary runs, with which arguments, environment, working directory and log file. Keeping it
//! pure (ConfigMaps and Secrets are fetched beforehand into [`EnvSources`]) makes the kubelet's
//! env rules — `envFrom` then `env`, `$(VAR)` expansion, downward-API `fieldRef`s — testable
//! without an apiserver.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::images::ImageMap;

/// Address every fake pod and node reports; processes share the host network.
pub const LOOPBACK: &str = "127.0.0.1";

/// Everything needed to start one container as a process.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessSpec {
    pub container: String,
    pub image: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The complete environment (the process starts from an empty one).
    pub env: Vec<(String, String)>,
    pub working_dir: PathBuf,
    pub log_path: PathBuf,
    /// File volumes (volumes.rs), bind-mounted in the process's own mount namespace.
    pub mounts: Vec<crate::volumes::FileMount>,
}

/// Why a pod cannot be started; each maps to a terminal Failed status.
#[derive(Clone, Debug, PartialEq)]
pub enum SpecError {
    NoContainer,
    ImageNotMapped(String),
    Config(String),
}

impl SpecError {
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::NoContainer => "NoContainer",
            SpecError::ImageNotMapped(_) => "ImageNotMapped",
            SpecError::Config(_) => "CreateContainerConfigError",
        }
    }

    /// The exit code reported in the container's terminated state.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpecError::ImageNotMapped(_) => 127,
            SpecError::NoContainer | SpecError::Config(_) => 128,
        }
    }

    pub fn message(&self) -> String {
        match self {
            SpecError::NoContainer => "pod has no containers".to_string(),
            SpecError::ImageNotMapped(image) => {
                format!("image {image:?} is not in the node agent's --image-map and command[0] is not an existing absolute path")
            }
            SpecError::Config(msg) => msg.clone(),
        }
    }
}

/// ConfigMaps and Secrets a container's env refers to, as fetched from the pod's namespace.
/// `None` (or absence) means the object does not exist.
#[derive(Clone, Debug, Default)]
pub struct EnvSources {
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

impl EnvSources {
    fn config_map(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.config_maps.get(name).and_then(|o| o.as_ref())
    }

    fn secret(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.secrets.get(name).and_then(|o| o.as_ref())
    }
}

/// Names of the ConfigMaps and Secrets a container's env and envFrom refer to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvRefs {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

pub fn first_container(pod: &Pod) -> Option<&Container> {
    pod.spec.as_ref().and_then(|s| s.containers.first())
}

pub fn env_refs(container: &Container) -> EnvRefs {
    let mut refs = EnvRefs::default();
    for from in container.env_from.iter().flatten() {
        if let Some(cm) = &from.config_map_ref {
            refs.config_maps.insert(cm.name.clone());
        }
        if let Some(s) = &from.secret_ref {
            refs.secrets.insert(s.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(src) = &var.value_from {
            if let Some(cm) = &src.config_map_key_ref {
                refs.config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &src.secret_key_ref {
                refs.secrets.insert(s.name.clone());
            }
        }
    }
    refs
}

/// Fixed inputs of the translation that come from the agent, not the pod.
#[derive(Clone, Debug)]
pub struct Host<'a> {
    pub images: &'a ImageMap,
    /// PATH/HOME/TMPDIR (whatever the agent passes through).
    pub base_env: &'a [(String, String)],
    pub work_dir: &'a Path,
}

/// Translate the pod's first container into a process spec.
pub fn translate(pod: &Pod, host: &Host<'_>, sources: &EnvSources) -> Result<ProcessSpec, SpecError> {
    let container = first_container(pod).ok_or(SpecError::NoContainer)?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".to_string());
    let name = pod.metadata.name.clone().unwrap_or_default();

    let container_env = container_env(pod, container, sources)?;
    let lookup = |var: &str| container_env.iter().rev().find(|(k, _)| k == var).map(|(_, v)| v.clone());

    let command: Vec<String> = container.command.iter().flatten().map(|c| expand(c, &lookup)).collect();
    let args: Vec<String> = container.args.iter().flatten().map(|a| expand(a, &lookup)).collect();
    let image = container.image.clone().unwrap_or_default();

    let (program, args) = match command.first() {
        Some(c0) if Path::new(c0).is_absolute() && Path::new(c0).exists() => {
            (PathBuf::from(c0), command[1..].iter().cloned().chain(args).collect())
        }
        _ => {
            let bin = host.images.lookup(&image).ok_or_else(|| SpecError::ImageNotMapped(image.clone()))?;
            let rest: Vec<String> = command.iter().skip(1).cloned().chain(args).collect();
            (bin.to_path_buf(), rest)
        }
    };

    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in host.base_env {
        set_var(&mut env, k, v.clone());
    }
    set_var(&mut env, "HOSTNAME", name.clone());
    let mounts = empty_dir_mounts(pod, container, host.work_dir);
    for (k, v) in container_env {
        set_var(&mut env, &k, rebase_on_mounts(&v, &mounts));
    }

    let working_dir = match container.working_dir.as_deref() {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => pod_dir(host.work_dir, pod),
    };
    let log_path = log_path(host.work_dir, &namespace, &name, &container.name);

    Ok(ProcessSpec { container: container.name.clone(), image, program, args, env, working_dir, log_path, mounts: Vec::new() })
}

/// Per-pod scratch directory, the default working directory.
/// There are no mount namespaces here: an emptyDir mount becomes a directory of the pod's own
/// (created now), and env values that point into the mount path are rebased onto it — so a
/// runner told `TMPDIR=/scratch` writes where the pod's emptyDir is. Mount paths that already
/// exist on the host (e.g. a memory-backed /dev/shm) are used as they are.
fn empty_dir_mounts(pod: &Pod, container: &Container, work_dir: &Path) -> Vec<(String, PathBuf)> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let mut out = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let is_empty_dir = volumes.and_then(|v| v.iter().find(|v| v.name == mount.name)).is_some_and(|v| v.empty_dir.is_some());
        if !is_empty_dir || Path::new(&mount.mount_path).exists() {
            continue;
        }
        let dir = pod_dir(work_dir, pod).join("volumes").join(&mount.name);
        let _ = std::fs::create_dir_all(&dir);
        out.push((mount.mount_path.trim_end_matches('/').to_string(), dir));
    }
    out
}

fn rebase_on_mounts(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (path, dir) in mounts {
        if value == path {
            return dir.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(&format!("{path}/")) {
            return dir.join(rest).display().to_string();
        }
    }
    value.to_string()
}

pub fn pod_dir(work_dir: &Path, pod: &Pod) -> PathBuf {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let uid: String = pod.metadata.uid.as_deref().unwrap_or("").chars().take(8).collect();
    work_dir.join("pods").join(format!("{namespace}_{name}_{uid}"))
}

pub fn log_path(work_dir: &Path, namespace: &str, pod: &str, container: &str) -> PathBuf {
    work_dir.join("logs").join(log_file_name(namespace, pod, container))
}

pub fn log_file_name(namespace: &str, pod: &str, container: &str) -> String {
    format!("{namespace}_{pod}_{container}.log")
}

/// The container's own variables, in kubelet order: `envFrom` sources first, then `env`
/// entries (each may refer to earlier ones with `$(NAME)`). Later definitions win.
fn container_env(pod: &Pod, container: &Container, sources: &EnvSources) -> Result<Vec<(String, String)>, SpecError> {
    let mut env: Vec<(String, String)> = Vec::new();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &from.config_map_ref {
            match sources.config_map(&cm.name) {
                Some(data) => Some(data),
                None if cm.optional == Some(true) => None,
                None => return Err(SpecError::Config(format!("configmap {:?} not found", cm.name))),
            }
        } else if let Some(s) = &from.secret_ref {
            match sources.secret(&s.name) {
                Some(data) => Some(data),
                None if s.optional == Some(true) => None,
                None => return Err(SpecError::Config(format!("secret {:?} not found", s.name))),
            }
        } else {
            None
        };
        for (k, v) in data.into_iter().flatten() {
            let key = format!("{prefix}{k}");
            if is_env_name(&key) {
                set_var(&mut env, &key, v.clone());
            }
        }
    }

    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let raw = var.value.clone().unwrap_or_default();
                let lookup = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                Some(expand(&raw, &lookup))
            }
            Some(src) => {
                if let Some(sel) = &src.config_map_key_ref {
                    let optional = sel.optional == Some(true);
                    match sources.config_map(&sel.name) {
                        None if optional => None,
                        None => return Err(SpecError::Config(format!("configmap {:?} not found", sel.name))),
                        Some(data) => match data.get(&sel.key) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(SpecError::Config(format!(
                                    "couldn't find key {} in ConfigMap {}/{}",
                                    sel.key,
                                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                                    sel.name
                                )))
                            }
                        },
                    }
                } else if let Some(sel) = &src.secret_key_ref {
                    let optional = sel.optional == Some(true);
                    match sources.secret(&sel.name) {
                        None if optional => None,
                        None => return Err(SpecError::Config(format!("secret {:?} not found", sel.name))),
                        Some(data) => match data.get(&sel.key) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(SpecError::Config(format!(
                                    "couldn't find key {} in Secret {}/{}",
                                    sel.key,
                                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                                    sel.name
                                )))
                            }
                        },
                    }
                } else if let Some(field) = &src.field_ref {
                    Some(field_value(pod, &field.field_path)?)
                } else {
                    // resourceFieldRef / fileKeyRef: not supported by the fake kubelet.
                    tracing::debug!(var = %var.name, "ignoring unsupported env valueFrom");
                    None
                }
            }
        };
        if let Some(value) = value {
            set_var(&mut env, &var.name, value);
        }
    }
    Ok(env)
}

/// Downward-API `fieldRef` values.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, SpecError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        // Every fake pod runs on the host network of 127.0.0.1; the kubelet knows the pod IP
        // before the container starts, so report what the status will say.
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => LOOPBACK.to_string(),
        _ => {
            if let Some(key) = subscript(path, "metadata.labels") {
                meta.labels.as_ref().and_then(|l| l.get(key)).cloned().unwrap_or_default()
            } else if let Some(key) = subscript(path, "metadata.annotations") {
                meta.annotations.as_ref().and_then(|a| a.get(key)).cloned().unwrap_or_default()
            } else {
                return Err(SpecError::Config(format!("unsupported fieldRef path {path:?}")));
            }
        }
    };
    Ok(value)
}

/// `metadata.labels['key']` → `key`.
fn subscript<'a>(path: &'a str, field: &str) -> Option<&'a str> {
    let inner = path.strip_prefix(field)?.strip_prefix('[')?.strip_suffix(']')?;
    inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
}

/// Kubernetes `$(VAR)` expansion: defined variables are substituted, undefined references are
/// left as written, and `$$` escapes a literal `$`.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push_str(&input[literal_start..i]);
                    out.push('$');
                    i += 2;
                    literal_start = i;
                    continue;
                }
                b'(' => {
                    if let Some(close) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + close];
                        out.push_str(&input[literal_start..i]);
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 3 + close]),
                        }
                        i += 3 + close;
                        literal_start = i;
                        continue;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    out.push_str(&input[literal_start..]);
    out
}

fn set_var(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

/// Since Kubernetes 1.30 any printable ASCII except '=' is accepted; the process environment
/// additionally cannot hold an empty name.
fn is_env_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "job-a-0-xyz",
                "namespace": "proofs",
                "uid": "0123456789abcdef",
                "labels": {"app": "runner", "batch.kubernetes.io/job-name": "job-a"},
                "annotations": {"batch.kubernetes.io/job-completion-index": "3"}
            },
            "spec": {
                "nodeName": "cpu-1",
                "serviceAccountName": "runner-sa",
                "restartPolicy": "Never",
                "containers": [container]
            }
        }))
        .unwrap()
    }

    fn images() -> ImageMap {
        ImageMap::parse(&["proofjobs/task-runner=/opt/bin/task-runner"]).unwrap()
    }

    fn host<'a>(images: &'a ImageMap, base: &'a [(String, String)]) -> Host<'a> {
        Host { images, base_env: base, work_dir: Path::new("/work") }
    }

    fn base() -> Vec<(String, String)> {
        vec![("PATH".into(), "/usr/bin:/bin".into()), ("HOME".into(), "/root".into())]
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn empty_dir_mount_paths_in_env_point_at_the_pods_own_directory() {
        let work = tempfile::tempdir().unwrap();
        let mut p = pod(json!({
            "name": "runner", "image": "proofjobs/task-runner:dev",
            "env": [{"name": "TMPDIR", "value": "/scratch-proofjobs-test"}, {"name": "CACHE", "value": "/scratch-proofjobs-test/keys"},
                    {"name": "SHM", "value": "/dev/shm"}],
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch-proofjobs-test"}, {"name": "dshm", "mountPath": "/dev/shm"}]
        }));
        p.spec.as_mut().unwrap().volumes = Some(
            serde_json::from_value(json!([
                {"name": "scratch", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}
            ]))
            .unwrap(),
        );
        let (im, b) = (images(), base());
        let mut h = host(&im, &b);
        h.work_dir = work.path();
        let spec = translate(&p, &h, &EnvSources::default()).unwrap();
        let tmp = PathBuf::from(get(&spec.env, "TMPDIR").unwrap());
        assert!(tmp.starts_with(work.path()) && tmp.is_dir(), "{tmp:?}");
        assert_eq!(PathBuf::from(get(&spec.env, "CACHE").unwrap()), tmp.join("keys"));
        assert_eq!(get(&spec.env, "SHM"), Some("/dev/shm"), "an existing host path is used as is");
    }

    #[test]
    fn mapped_image_with_command_and_args() {
        let p = pod(json!({
            "name": "runner",
            "image": "proofjobs/task-runner:dev",
            "command": ["/usr/local/bin/task-runner", "run"],
            "args": ["--stage", "prove"]
        }));
        let (im, b) = (images(), base());
        let spec = translate(&p, &host(&im, &b), &EnvSources::default()).unwrap();
        assert_eq!(spec.program, PathBuf::from("/opt/bin/task-runner"));
        assert_eq!(spec.args, vec!["run", "--stage", "prove"]);
        assert_eq!(spec.container, "runner");
        assert_eq!(spec.image, "proofjobs/task-runner:dev");
        assert_eq!(spec.working_dir, PathBuf::from("/work/pods/proofs_job-a-0-xyz_01234567"));
        assert_eq!(spec.log_path, PathBuf::from("/work/logs/proofs_job-a-0-xyz_runner.log"));
        assert_eq!(get(&spec.env, "PATH"), Some("/usr/bin:/bin"));
        assert_eq!(get(&spec.env, "HOSTNAME"), Some("job-a-0-xyz"));
    }

    #[test]
    fn mapped_image_without_command_uses_args() {
        let p = pod(json!({"name": "c", "image": "proofjobs/task-runner", "args": ["a", "b"]}));
        let (im, b) = (images(), base());
        let spec = translate(&p, &host(&im, &b), &EnvSources::default()).unwrap();
        assert_eq!(spec.program, PathBuf::from("/opt/bin/task-runner"));
        assert_eq!(spec.args, vec!["a", "b"]);
    }

    #[test]
    fn absolute_existing_command_runs_directly() {
        let p = pod(json!({
            "name": "c", "image": "unmapped/image:1",
            "command": ["/bin/sh", "-c"], "args": ["exit 0"], "workingDir": "/tmp"
        }));
        let (im, b) = (images(), base());
        let spec = translate(&p, &host(&im, &b), &EnvSources::default()).unwrap();
        assert_eq!(spec.program, PathBuf::from("/bin/sh"));
        assert_eq!(spec.args, vec!["-c", "exit 0"]);
        assert_eq!(spec.working_dir, PathBuf::from("/tmp"));
    }

    #[test]
    fn unknown_image_is_not_mapped() {
        let p = pod(json!({"name": "c", "image": "nope/nothing:1", "command": ["nothing"]}));
        let (im, b) = (images(), base());
        let err = translate(&p, &host(&im, &b), &EnvSources::default()).unwrap_err();
        assert_eq!(err, SpecError::ImageNotMapped("nope/nothing:1".into()));
        assert_eq!(err.exit_code(), 127);
        assert_eq!(err.reason(), "ImageNotMapped");
    }

    #[test]
    fn field_refs_resolve() {
        let p = pod(json!({"name": "c", "image": "proofjobs/task-runner"}));
        let f = |path: &str| field_value(&p, path).unwrap();
        assert_eq!(f("metadata.name"), "job-a-0-xyz");
        assert_eq!(f("metadata.namespace"), "proofs");
        assert_eq!(f("metadata.uid"), "0123456789abcdef");
        assert_eq!(f("spec.nodeName"), "cpu-1");
        assert_eq!(f("spec.serviceAccountName"), "runner-sa");
        assert_eq!(f("status.podIP"), "127.0.0.1");
        assert_eq!(f("status.hostIP"), "127.0.0.1");
        assert_eq!(f("metadata.labels['app']"), "runner");
        assert_eq!(f("metadata.labels['missing']"), "");
        assert_eq!(f("metadata.annotations['batch.kubernetes.io/job-completion-index']"), "3");
        assert_eq!(f("metadata.labels[\"batch.kubernetes.io/job-name\"]"), "job-a");
        assert!(field_value(&p, "spec.containers").is_err());
    }

    #[test]
    fn env_order_sources_and_expansion() {
        let p = pod(json!({
            "name": "c",
            "image": "proofjobs/task-runner",
            "args": ["--index=$(JOB_COMPLETION_INDEX)", "$(UNDEFINED)", "$$(ESCAPED)"],
            "envFrom": [
                {"configMapRef": {"name": "settings"}},
                {"secretRef": {"name": "creds"}, "prefix": "S_"},
                {"configMapRef": {"name": "absent", "optional": true}}
            ],
            "env": [
                {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                {"name": "MODE", "value": "override"},
                {"name": "URL", "value": "redis://$(HOST):6379/$(JOB_COMPLETION_INDEX)"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x", "optional": true}}},
                {"name": "OPT2", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "EMPTY"},
                {"name": "PATH", "value": "/custom"}
            ]
        }));
        let mut sources = EnvSources::default();
        sources.config_maps.insert(
            "settings".into(),
            Some(
                [("MODE", "base"), ("HOST", "redis.local"), ("level", "debug"), ("bad=name", "x")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        );
        sources.config_maps.insert("absent".into(), None);
        sources.secrets.insert("creds".into(), Some([("token".to_string(), "s3cret".to_string())].into_iter().collect()));
        let (im, b) = (images(), base());
        let spec = translate(&p, &host(&im, &b), &sources).unwrap();
        let env = &spec.env;
        assert_eq!(get(env, "JOB_COMPLETION_INDEX"), Some("3"));
        assert_eq!(get(env, "MODE"), Some("override"));
        assert_eq!(get(env, "HOST"), Some("redis.local"));
        assert_eq!(get(env, "URL"), Some("redis://redis.local:6379/3"));
        assert_eq!(get(env, "S_token"), Some("s3cret"));
        assert_eq!(get(env, "TOKEN"), Some("s3cret"));
        assert_eq!(get(env, "LEVEL"), Some("debug"));
        assert_eq!(get(env, "level"), Some("debug"));
        assert_eq!(get(env, "OPT"), None);
        assert_eq!(get(env, "OPT2"), None);
        assert_eq!(get(env, "bad=name"), None);
        assert_eq!(get(env, "NODE"), Some("cpu-1"));
        assert_eq!(get(env, "EMPTY"), Some(""));
        // The container may override the agent's PATH.
        assert_eq!(get(env, "PATH"), Some("/custom"));
        assert_eq!(get(env, "HOME"), Some("/root"));
        assert_eq!(spec.args, vec!["--index=3", "$(UNDEFINED)", "$(ESCAPED)"]);
    }

    #[test]
    fn missing_required_sources_are_config_errors() {
        let cases = [
            json!({"name": "c", "image": "proofjobs/task-runner", "envFrom": [{"configMapRef": {"name": "gone"}}]}),
            json!({"name": "c", "image": "proofjobs/task-runner", "envFrom": [{"secretRef": {"name": "gone"}}]}),
            json!({"name": "c", "image": "proofjobs/task-runner", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]}),
            json!({"name": "c", "image": "proofjobs/task-runner", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "present", "key": "missing"}}}]}),
        ];
        let mut sources = EnvSources::default();
        sources.config_maps.insert("present".into(), Some(BTreeMap::new()));
        let (im, b) = (images(), base());
        for c in cases {
            let err = translate(&pod(c.clone()), &host(&im, &b), &sources).unwrap_err();
            assert!(matches!(err, SpecError::Config(_)), "{c}: {err:?}");
            assert_eq!(err.reason(), "CreateContainerConfigError");
        }
    }

    #[test]
    fn env_refs_lists_objects() {
        let p = pod(json!({
            "name": "c", "image": "x",
            "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "s1"}}],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "b", "key": "k"}}},
                    {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}}]
        }));
        let refs = env_refs(first_container(&p).unwrap());
        assert_eq!(refs.config_maps.into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(refs.secrets.into_iter().collect::<Vec<_>>(), vec!["s1", "s2"]);
    }

    #[test]
    fn expansion_rules() {
        let lookup = |k: &str| (k == "A").then(|| "1".to_string());
        assert_eq!(expand("x$(A)y", &lookup), "x1y");
        assert_eq!(expand("$(B)", &lookup), "$(B)");
        assert_eq!(expand("$$(A)", &lookup), "$(A)");
        assert_eq!(expand("$$$(A)", &lookup), "$1");
        assert_eq!(expand("cost $5", &lookup), "cost $5");
        assert_eq!(expand("$(A", &lookup), "$(A");
        assert_eq!(expand("trailing $", &lookup), "trailing $");
        assert_eq!(expand("é$(A)é", &lookup), "é1é");
    }
}
