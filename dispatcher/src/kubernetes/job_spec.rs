//! What a stage Job looks like (docs/ARCHITECTURE.md, "Kubernetes backend"), built in one place from the runner spec, the
//! stage profiles and the operator's settings, so unit tests can pin every field the contract
//! promises and the real-apiserver tests can check the apiserver accepts it.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{
            Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyOnPodConditionsPattern,
            PodFailurePolicyRule,
        },
        core::v1::{
            Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HostPathVolumeSource, ObjectFieldSelector,
            PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext,
            Toleration, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use proofjobs_pipeline::{
    exit,
    runner_env::{self, RunnerEnv},
    stage::labels,
};

use super::profiles::StageProfile;
use crate::backend::RunnerSpec;

pub use proofjobs_pipeline::runner_env::POD_BACKEND;

/// The runner container's name; podFailurePolicy rules refer to it.
pub const CONTAINER: &str = "task-runner";
/// The GPU resource and the taint GPU nodes carry.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The images' fixed non-root user and group (the Dockerfile's `USER`).
pub const RUNNER_UID: i64 = 10001;

/// Operator settings shared by every Job.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub namespace: String,
    pub image: String,
    /// The runner binary inside the image.
    pub command: String,
    /// ServiceAccount of runner pods (they need no Kubernetes API access; the token is not mounted).
    pub service_account: Option<String>,
    /// Secret holding `runner-database-url` (a member of the `proofjobs_runner` database role)
    /// and `artifact-store`; they reach pods only via secretKeyRef.
    pub runner_secret: String,
    /// Non-secret environment passed to every runner (RUST_LOG, SP1 settings).
    pub extra_env: Vec<(String, String)>,
    pub ttl_after_finished_secs: i32,
    /// Size limit of the memory-backed /dev/shm.
    pub shm_size: String,
    /// Size limit of the /scratch emptyDir (TMPDIR): a runner that writes more is evicted
    /// instead of filling the node's disk.
    pub scratch_size: String,
    /// A node directory shared by the runners on that node as their recursion-key cache, so only
    /// the first runner on a node computes the keys. None: the image's own cache (PROOFJOBS_KEY_CACHE
    /// baked in with `warm-keys`), which also suits namespaces whose Pod Security forbids hostPath.
    pub key_cache_host_path: Option<String>,
}

/// Where a host key-cache directory appears inside runner pods.
pub const KEY_CACHE_MOUNT: &str = "/var/cache/proofjobs/sp1-keys";

impl JobSettings {
    pub fn for_tests(namespace: &str) -> JobSettings {
        JobSettings {
            namespace: namespace.into(),
            image: "proofjobs/task-runner:dev".into(),
            command: "/usr/local/bin/task-runner".into(),
            service_account: None,
            runner_secret: "proofjobs-stores".into(),
            extra_env: Vec::new(),
            ttl_after_finished_secs: 600,
            shm_size: "2Gi".into(),
            scratch_size: "20Gi".into(),
            key_cache_host_path: None,
        }
    }
}

/// A Job's name: `<proof-short-id>-<stages>[-a<attempt>]`, deterministic so a restarted
/// dispatcher finds the Job it created instead of making a twin.
pub fn job_name(proof_id: &str, group_name: &str, attempt: u32) -> String {
    let base = format!("{}-{}", proofjobs_pipeline::ids::short_proof_id(proof_id), group_name);
    if attempt == 0 {
        base
    } else {
        format!("{base}-a{attempt}")
    }
}

/// The proof label's value: the proof id when it is a valid label value, else its short id (the
/// full id is always in the `proofjobs.io/proof-id` annotation).
pub fn proof_label(proof_id: &str) -> String {
    let valid = !proof_id.is_empty()
        && proof_id.len() <= 63
        && proof_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && proof_id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && proof_id.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        proof_id.to_string()
    } else {
        proofjobs_pipeline::ids::short_proof_id(proof_id)
    }
}

pub const PROOF_ID_ANNOTATION: &str = "proofjobs.io/proof-id";
/// The runner Secret's key with the database URL runners use: a role with rights on the task
/// tables of the proof whose token it presents, nothing else (the api's `database-url` is the owner's).
pub const RUNNER_DATABASE_URL_KEY: &str = "runner-database-url";

/// The `proofjobs.io/gpu` label value for a runner's device description ("NVIDIA H200 (GPU 0,
/// …)"): the model, with what a label value cannot hold turned into `-`.
pub fn gpu_label(device: &str) -> String {
    label_value(device.split(" (").next().unwrap_or(device))
}

/// `text` as a valid label value: other characters become `-`, at most 63, alphanumeric ends.
fn label_value(text: &str) -> String {
    let cleaned: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }).take(63).collect();
    cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// Labels every object of a runner group carries (Job and pods).
pub fn group_labels(spec: &RunnerSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
        (labels::PROOF.to_string(), proof_label(&spec.proof_id)),
        (labels::STAGE.to_string(), proofjobs_pipeline::stage::group_name(&spec.stages)),
        (labels::REQUESTER.to_string(), label_value(&spec.share.requester)),
    ])
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(false) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Job for one runner group. `suspend` queues it behind the global GPU cap.
pub fn build_job(spec: &RunnerSpec, profile: &StageProfile, settings: &JobSettings, suspend: bool) -> Job {
    let name = spec.runner_id.clone();
    let mut job_labels = group_labels(spec);
    job_labels.insert(labels::PROGRESS.into(), "0-of-0".into());
    let pod_labels = group_labels(spec);
    let annotations = BTreeMap::from([(PROOF_ID_ANNOTATION.to_string(), spec.proof_id.clone())]);
    let mut job_annotations = annotations.clone();
    job_annotations.insert(labels::WEIGHT.into(), spec.share.weight.to_string());
    if let Some(max) = spec.share.max_gpu_runners {
        job_annotations.insert(labels::MAX_GPU_RUNNERS.into(), max.to_string());
    }
    job_annotations.insert(labels::PRIORITY.into(), spec.share.priority.as_str().into());

    // The runner contract. Each pod is its own runner (its own claims and heartbeat), grouped
    // under the Job; the state and store URLs come from the runner Secret.
    let contract = RunnerEnv {
        proof_id: spec.proof_id.clone(),
        stages: spec.stages.clone(),
        runner_id: None,
        backend: POD_BACKEND.into(),
        handle: Some(name.clone()),
        database_url: String::new(),
        artifact_store: String::new(),
        key_cache: settings.key_cache_host_path.as_ref().map(|_| KEY_CACHE_MOUNT.to_string()),
        prover: None,
        gpu_min_free_gib: profile.gpu_min_free_gib.filter(|_| profile.gpus > 0),
        idle_exit_secs: None,
        runner_token: spec.runner_token.clone(),
        gpus: Some(profile.gpus).filter(|g| *g > 0),
    };
    let mut env: Vec<EnvVar> = contract.to_vars().into_iter().map(|(k, v)| self::env(k, v)).collect();
    env.extend([
        field_env(runner_env::RUNNER_ID, "metadata.name"),
        secret_env(runner_env::DATABASE_URL, &settings.runner_secret, RUNNER_DATABASE_URL_KEY),
        secret_env(runner_env::ARTIFACT_STORE, &settings.runner_secret, "artifact-store"),
        self::env("TMPDIR", "/scratch"),
    ]);
    env.extend(settings.extra_env.iter().map(|(k, v)| self::env(k, v)));
    let mut mounts = vec![
        VolumeMount { name: "scratch".into(), mount_path: "/scratch".into(), ..Default::default() },
        VolumeMount { name: "dshm".into(), mount_path: "/dev/shm".into(), ..Default::default() },
    ];
    let mut volumes = vec![
        // The SP1 executor writes a helper binary to TMPDIR and runs it: it must be writable
        // and exec-able even when the image's root filesystem is read-only.
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity(settings.scratch_size.clone())), ..Default::default() }),
            ..Default::default()
        },
        // POSIX shared memory of the executor; Kubernetes' default /dev/shm is 64 MB.
        Volume {
            name: "dshm".into(),
            empty_dir: Some(EmptyDirVolumeSource { medium: Some("Memory".into()), size_limit: Some(Quantity(settings.shm_size.clone())) }),
            ..Default::default()
        },
    ];
    if let Some(host_path) = &settings.key_cache_host_path {
        mounts.push(VolumeMount { name: "sp1-keys".into(), mount_path: KEY_CACHE_MOUNT.into(), ..Default::default() });
        volumes.push(Volume {
            name: "sp1-keys".into(),
            host_path: Some(HostPathVolumeSource { path: host_path.clone(), type_: Some("DirectoryOrCreate".into()) }),
            ..Default::default()
        });
    }

    let mut quantities =
        BTreeMap::from([("cpu".to_string(), Quantity(profile.cpu.clone())), ("memory".to_string(), Quantity(profile.memory.clone()))]);
    let mut limits = BTreeMap::from([("memory".to_string(), Quantity(profile.memory.clone()))]);
    let mut tolerations = profile.tolerations.clone();
    if profile.gpus > 0 {
        // Extended resources: request must equal limit.
        quantities.insert(GPU_RESOURCE.into(), Quantity(profile.gpus.to_string()));
        limits.insert(GPU_RESOURCE.into(), Quantity(profile.gpus.to_string()));
        tolerations.push(Toleration {
            key: Some(GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
    }

    let container = Container {
        name: CONTAINER.into(),
        image: Some(profile.image.clone().unwrap_or_else(|| settings.image.clone())),
        command: Some(vec![settings.command.clone()]),
        env: Some(env),
        resources: Some(ResourceRequirements { requests: Some(quantities), limits: Some(limits), ..Default::default() }),
        volume_mounts: Some(mounts),
        // Pod Security "restricted": the runner writes only to its volumes.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = PodSpec {
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            run_as_group: Some(RUNNER_UID),
            fs_group: Some(RUNNER_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        restart_policy: Some("Never".into()),
        service_account_name: settings.service_account.clone(),
        automount_service_account_token: Some(false),
        // SIGTERM hands tasks back within a second or two; the grace covers a slow store.
        termination_grace_period_seconds: Some(30),
        node_selector: (!profile.node_selector.is_empty()).then(|| profile.node_selector.clone()),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        priority_class_name: spec.share.priority.class_name().map(str::to_string),
        containers: vec![container],
        volumes: Some(volumes),
        ..Default::default()
    };

    let exit_rule = |action: &str, values: Vec<i32>| PodFailurePolicyRule {
        action: action.into(),
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: Some(CONTAINER.into()),
            operator: "In".into(),
            values,
        }),
        on_pod_conditions: None,
    };
    let failure_policy = PodFailurePolicy {
        rules: vec![
            // Bad input or configuration: retrying cannot help.
            exit_rule("FailJob", vec![exit::USAGE, exit::BAD_INPUT]),
            // Wrong node or transient trouble (tasks were handed back): replace the pod, uncounted.
            exit_rule("Ignore", vec![exit::UNSUITABLE_NODE, exit::TRANSIENT]),
            // Node gone, preempted, evicted (spot): not the runner's fault.
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_exit_codes: None,
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
            },
        ],
    };

    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(settings.namespace.clone()),
            labels: Some(job_labels),
            annotations: Some(job_annotations),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // A work queue: pods pull tasks until none are left; no completion count.
            parallelism: Some(1),
            completions: None,
            // Counted failures become a new attempt Job, decided by the dispatcher with backoff.
            backoff_limit: Some(0),
            pod_failure_policy: Some(failure_policy),
            // A replacement starts only once the old pod has really stopped (no two claimers).
            pod_replacement_policy: Some("Failed".into()),
            active_deadline_seconds: Some(spec.deadline_secs.max(1)),
            ttl_seconds_after_finished: Some(settings.ttl_after_finished_secs),
            suspend: Some(suspend),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), annotations: Some(annotations), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use proofjobs_pipeline::stage::Stage;

    use super::*;
    use crate::kubernetes::profiles::StageProfiles;

    fn spec(stages: Vec<Stage>) -> RunnerSpec {
        RunnerSpec {
            runner_id: job_name("proof_0192ab", &proofjobs_pipeline::stage::group_name(&stages), 0),
            proof_id: "proof_0192ab".into(),
            stages,
            deadline_secs: 3600,
            share: crate::backend::Share {
                requester: "team-a".into(),
                weight: 2,
                max_gpu_runners: Some(3),
                priority: proofjobs_pipeline::state::Priority::High,
            },
            runner_token: Some("t0k3n".into()),
        }
    }

    fn json(stages: Vec<Stage>) -> serde_json::Value {
        let spec = spec(stages);
        let profiles = StageProfiles::default();
        serde_json::to_value(build_job(&spec, &profiles.for_group(&spec.stages), &JobSettings::for_tests("ns"), false)).unwrap()
    }

    #[test]
    fn names_are_deterministic_dns_labels_with_attempts() {
        let a = job_name("proof_0192ab", "prove-core", 0);
        assert_eq!(a, job_name("proof_0192ab", "prove-core", 0));
        assert!(a.ends_with("-prove-core"));
        assert!(job_name("proof_0192ab", "prove-core", 2).ends_with("-prove-core-a2"));
        let long = job_name(&"x".repeat(300), "setup-prove-core-compress-shrink", 99);
        assert!(long.len() <= 63, "{long}");
        assert!(long.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }

    #[test]
    fn the_gpu_label_is_the_model_as_a_label_value() {
        assert_eq!(gpu_label("NVIDIA H200 (GPU 0, compute 9.0, 139.3 GiB free of 139.8 GiB, 1% busy)"), "NVIDIA-H200");
        assert_eq!(gpu_label("NVIDIA GeForce RTX 4090"), "NVIDIA-GeForce-RTX-4090");
        assert!(gpu_label(&format!("{} (GPU 0)", "X".repeat(100))).len() <= 63);
    }

    #[test]
    fn proof_label_falls_back_to_the_short_id() {
        assert_eq!(proof_label("proof_0192ab"), "proof_0192ab");
        assert_ne!(proof_label("bad/id"), "bad/id");
        assert_ne!(proof_label(&"a".repeat(64)), "a".repeat(64));
    }

    #[test]
    fn gpu_stage_requests_a_gpu_tolerates_the_taint_and_selects_the_pool() {
        let v = json(vec![Stage::ProveCore]);
        let pod = &v["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["resources"]["requests"]["nvidia.com/gpu"], "1");
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
        assert_eq!(pod["tolerations"][0]["effect"], "NoSchedule");
        assert_eq!(pod["nodeSelector"]["proofjobs.io/pool"], "gpu");
        assert_eq!(v["metadata"]["labels"]["proofjobs.io/stage"], "prove-core");
        assert_eq!(v["metadata"]["labels"]["proofjobs.io/progress"], "0-of-0");
        assert_eq!(v["metadata"]["labels"]["app.kubernetes.io/managed-by"], "proofjobs");
        assert_eq!(v["spec"]["template"]["metadata"]["labels"]["proofjobs.io/proof"], "proof_0192ab");
        assert_eq!(c["image"], "proofjobs/task-runner:dev");
    }

    #[test]
    fn a_job_names_its_requester_and_carries_its_share() {
        let v = json(vec![Stage::ProveCore]);
        assert_eq!(v["metadata"]["labels"]["proofjobs.io/requester"], "team-a");
        assert_eq!(v["spec"]["template"]["metadata"]["labels"]["proofjobs.io/requester"], "team-a");
        assert_eq!(v["metadata"]["annotations"]["proofjobs.io/weight"], "2");
        assert_eq!(v["metadata"]["annotations"]["proofjobs.io/priority"], "high");
        assert_eq!(v["spec"]["template"]["spec"]["priorityClassName"], "proofjobs-high");
        assert_eq!(v["metadata"]["annotations"]["proofjobs.io/max-gpu-runners"], "3");
        assert!(v["spec"]["template"]["metadata"]["annotations"].get("proofjobs.io/weight").is_none());
        assert_eq!(label_value("x/y z"), "x-y-z");
    }

    #[test]
    fn a_gpu_profile_picks_the_cuda_image_and_passes_its_memory_floor() {
        let profiles = StageProfiles::parse(
            r#"{"prove-core": {"gpus": 1, "cpu": "8", "memory": "48Gi", "image": "proofjobs/task-runner-cuda:dev", "gpuMinFreeGib": 40}}"#,
        )
        .unwrap();
        let spec = spec(vec![Stage::ProveCore]);
        let job = build_job(&spec, profiles.get(Stage::ProveCore), &JobSettings::for_tests("ns"), false);
        let v = serde_json::to_value(&job).unwrap();
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "proofjobs/task-runner-cuda:dev");
        assert!(c["env"].as_array().unwrap().iter().any(|e| e["name"] == "PROOFJOBS_GPU_MIN_FREE_GIB" && e["value"] == "40"));
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
    }

    #[test]
    fn cpu_stage_has_no_gpu_and_no_toleration() {
        let v = json(vec![Stage::Execute]);
        let pod = &v["spec"]["template"]["spec"];
        assert!(pod["containers"][0]["resources"]["requests"].get("nvidia.com/gpu").is_none());
        assert!(pod.get("tolerations").is_none());
        assert_eq!(pod["nodeSelector"]["proofjobs.io/pool"], "cpu");
    }

    #[test]
    fn failure_policy_follows_the_exit_code_contract() {
        let v = json(vec![Stage::Setup]);
        let rules = &v["spec"]["podFailurePolicy"]["rules"];
        assert_eq!(rules[0]["action"], "FailJob");
        assert_eq!(rules[0]["onExitCodes"]["values"], serde_json::json!([64, 65]));
        assert_eq!(rules[1]["action"], "Ignore");
        assert_eq!(rules[1]["onExitCodes"]["values"], serde_json::json!([69, 75]));
        assert_eq!(rules[2]["onPodConditions"][0]["type"], "DisruptionTarget");
        assert_eq!(v["spec"]["template"]["spec"]["restartPolicy"], "Never");
        assert_eq!(v["spec"]["backoffLimit"], 0);
        assert_eq!(v["spec"]["podReplacementPolicy"], "Failed");
        assert_eq!(v["spec"]["activeDeadlineSeconds"], 3600);
        assert_eq!(v["spec"]["ttlSecondsAfterFinished"], 600);
    }

    #[test]
    fn secrets_only_by_reference_and_scratch_space_mounted() {
        let v = json(vec![Stage::Compress]);
        let text = v.to_string();
        let env = v["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        let db = env.iter().find(|e| e["name"] == "DATABASE_URL").unwrap();
        assert!(db.get("value").is_none());
        assert_eq!(db["valueFrom"]["secretKeyRef"]["name"], "proofjobs-stores");
        let id = env.iter().find(|e| e["name"] == "PROOFJOBS_RUNNER_ID").unwrap();
        assert_eq!(id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
        assert!(!text.contains("postgres://"));
        let volumes = &v["spec"]["template"]["spec"]["volumes"];
        assert_eq!(volumes[1]["emptyDir"]["medium"], "Memory");
        assert!(env.iter().any(|e| e["name"] == "TMPDIR" && e["value"] == "/scratch"));
        assert_eq!(v["spec"]["template"]["spec"]["automountServiceAccountToken"], false);
        assert!(!text.contains("hostPath"), "no host directory unless the operator asks for one");
        assert_eq!(volumes[0]["emptyDir"]["sizeLimit"], "20Gi");
    }

    #[test]
    fn runner_pods_meet_pod_security_restricted() {
        let v = json(vec![Stage::ProveCore]);
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], RUNNER_UID);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let c = &pod["containers"][0]["securityContext"];
        assert_eq!(c["allowPrivilegeEscalation"], false);
        assert_eq!(c["readOnlyRootFilesystem"], true);
        assert_eq!(c["capabilities"]["drop"][0], "ALL");
    }

    #[test]
    fn a_host_key_cache_is_mounted_and_named_to_the_runner() {
        let spec = spec(vec![Stage::ProveCore]);
        let mut settings = JobSettings::for_tests("ns");
        settings.key_cache_host_path = Some("/mnt/nvme/sp1-keys".into());
        let profiles = StageProfiles::default();
        let v = serde_json::to_value(build_job(&spec, &profiles.for_group(&spec.stages), &settings, false)).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "sp1-keys").unwrap();
        assert_eq!(volume["hostPath"]["path"], "/mnt/nvme/sp1-keys");
        assert_eq!(volume["hostPath"]["type"], "DirectoryOrCreate");
        let mount = pod["containers"][0]["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "sp1-keys").unwrap();
        assert_eq!(mount["mountPath"], KEY_CACHE_MOUNT);
        let env = pod["containers"][0]["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e["name"] == "PROOFJOBS_KEY_CACHE" && e["value"] == KEY_CACHE_MOUNT));
    }
}
