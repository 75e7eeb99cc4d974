//! Stage profiles: where each stage's pods run and what they ask for. Operators keep them in a
//! ConfigMap (`profiles.json`, mounted as a file) so pools, GPU counts and memory change without a
//! new dispatcher build; missing stages fall back to the defaults below.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Toleration;
use proofjobs_pipeline::stage::{Pool, Stage};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageProfile {
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Extra tolerations; GPU stages get the `nvidia.com/gpu` one automatically.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// `nvidia.com/gpu` per pod; 0 for CPU stages.
    #[serde(default)]
    pub gpus: u32,
    pub cpu: String,
    pub memory: String,
    /// The runner image of this stage, e.g. the CUDA image for GPU stages; default `--runner-image`.
    #[serde(default)]
    pub image: Option<String>,
    /// Free GPU memory (GiB) a runner of this stage needs before it claims work; below it the
    /// runner exits 69 and the pod is retried elsewhere (default: the runner's own floor, 20 GiB).
    #[serde(default)]
    pub gpu_min_free_gib: Option<f64>,
}

impl StageProfile {
    /// Values serde cannot judge; the error starts with the field's name.
    fn validate(&self) -> Result<(), String> {
        if !is_cpu_quantity(&self.cpu) {
            return Err(format!("cpu: {:?} is not a CPU quantity such as \"4\" or \"500m\"", self.cpu));
        }
        if bytes(&self.memory).is_none_or(|b| b == 0) {
            return Err(format!("memory: {:?} is not a memory quantity such as \"24Gi\"", self.memory));
        }
        if self.gpus > 16 {
            return Err(format!("gpus: {} GPUs per pod is more than any node has (at most 16)", self.gpus));
        }
        if self.image.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return Err("image: empty; leave it out to use --runner-image".into());
        }
        if let Some(gib) = self.gpu_min_free_gib {
            if self.gpus == 0 {
                return Err("gpuMinFreeGib: set on a stage with gpus 0".into());
            }
            if !(gib > 0.0 && gib < 1024.0) {
                return Err(format!("gpuMinFreeGib: {gib} is not a plausible amount of GPU memory in GiB"));
            }
        }
        for (i, t) in self.tolerations.iter().enumerate() {
            if let Some(op) = t.operator.as_deref().filter(|op| !matches!(*op, "Equal" | "Exists")) {
                return Err(format!("tolerations[{i}].operator: {op:?} is not Equal or Exists"));
            }
            if let Some(effect) = t.effect.as_deref().filter(|e| !matches!(*e, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute")) {
                return Err(format!("tolerations[{i}].effect: {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"));
            }
        }
        Ok(())
    }

    fn default_for(stage: Stage) -> StageProfile {
        let pool = match stage.pool() {
            Pool::Cpu => "cpu",
            Pool::Gpu => "gpu",
        };
        let (gpus, cpu, memory) = match stage {
            Stage::Execute => (0, "2", "8Gi"),
            // The CPU-side SP1 prover state of a GPU runner (keys, recursion programs): ~8–18 GB.
            Stage::Setup | Stage::ProveCore | Stage::Compress | Stage::Shrink => (1, "4", "24Gi"),
            Stage::Wrap => (0, "4", "24Gi"),
        };
        StageProfile {
            node_selector: BTreeMap::from([("proofjobs.io/pool".to_string(), pool.to_string())]),
            tolerations: Vec::new(),
            gpus,
            cpu: cpu.into(),
            memory: memory.into(),
            image: None,
            gpu_min_free_gib: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StageProfiles {
    by_stage: BTreeMap<Stage, StageProfile>,
}

impl Default for StageProfiles {
    fn default() -> Self {
        StageProfiles { by_stage: Stage::ALL.iter().map(|s| (*s, StageProfile::default_for(*s))).collect() }
    }
}

impl StageProfiles {
    /// Parse `{"<stage>": {profile}, ...}`. Every mistake names its place (`prove-core.gpus:
    /// invalid type ...`, `unknown field \`gpu\``, `setup.memory: "lots" is not ...`): an
    /// operator's typo fails the dispatcher's start, not the first Job hours later.
    pub fn parse(json: &str) -> Result<StageProfiles> {
        let raw: BTreeMap<String, StageProfile> = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(json))
            .map_err(|e| anyhow::anyhow!("stage profiles: {}: {}", e.path(), e.inner()))?;
        let mut profiles = StageProfiles::default();
        for (name, profile) in raw {
            let stage = name.parse::<Stage>().map_err(|e| anyhow::anyhow!("stage profiles: {e}"))?;
            profile.validate().map_err(|e| anyhow::anyhow!("stage profiles: {name}.{e}"))?;
            profiles.by_stage.insert(stage, profile);
        }
        Ok(profiles)
    }

    pub fn load(path: &Path) -> Result<StageProfiles> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading stage profiles {}", path.display()))?;
        StageProfiles::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn get(&self, stage: Stage) -> &StageProfile {
        &self.by_stage[&stage]
    }

    /// The profile of a runner group: its GPU stage's (the scarce resource decides the node),
    /// with the largest memory of the group.
    pub fn for_group(&self, stages: &[Stage]) -> StageProfile {
        let lead = stages.iter().find(|s| self.get(**s).gpus > 0).or(stages.first()).copied().unwrap_or(Stage::Execute);
        let mut profile = self.get(lead).clone();
        let biggest = stages.iter().map(|s| &self.get(*s).memory).max_by_key(|m| bytes(m).unwrap_or(0)).cloned();
        if let Some(memory) = biggest {
            profile.memory = memory;
        }
        profile
    }
}

/// A memory quantity in bytes (plain, Ki/Mi/Gi/Ti or k/M/G/T); `None` when it is not one.
fn bytes(q: &str) -> Option<u128> {
    let units: [(&str, u128); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, factor) = units.iter().find_map(|(suffix, f)| q.strip_suffix(suffix).map(|n| (n, *f))).unwrap_or((q, 1));
    number.parse::<u128>().ok().map(|n| n * factor)
}

/// Whole or decimal cores ("4", "0.5") or millicores ("500m").
fn is_cpu_quantity(q: &str) -> bool {
    let number = q.strip_suffix('m').unwrap_or(q);
    !number.is_empty() && number.parse::<f64>().is_ok_and(|n| n > 0.0 && n.is_finite()) && !number.starts_with('+')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_put_gpu_stages_on_the_gpu_pool() {
        let p = StageProfiles::default();
        assert_eq!(p.get(Stage::ProveCore).gpus, 1);
        assert_eq!(p.get(Stage::ProveCore).node_selector["proofjobs.io/pool"], "gpu");
        assert_eq!(p.get(Stage::Execute).gpus, 0);
        assert_eq!(p.get(Stage::Wrap).node_selector["proofjobs.io/pool"], "cpu");
    }

    #[test]
    fn a_configmap_overrides_one_stage_and_rejects_typos() {
        let p = StageProfiles::parse(r#"{"prove-core": {"nodeSelector": {"node.kubernetes.io/instance-type": "g6.xlarge"}, "gpus": 1, "cpu": "8", "memory": "48Gi"}}"#).unwrap();
        assert_eq!(p.get(Stage::ProveCore).memory, "48Gi");
        assert_eq!(p.get(Stage::Setup).memory, "24Gi");
        assert!(StageProfiles::parse(r#"{"prove": {"cpu": "1", "memory": "1Gi"}}"#).is_err());
        assert!(StageProfiles::parse(r#"{"setup": {"cpu": "1", "memory": "1Gi", "gpu": 1}}"#).is_err());
    }

    #[test]
    fn gpu_stages_can_name_the_cuda_image_and_a_memory_floor() {
        let p = StageProfiles::parse(
            r#"{"prove-core": {"gpus": 1, "cpu": "8", "memory": "48Gi", "image": "registry/proofjobs/task-runner-cuda:1", "gpuMinFreeGib": 40}}"#,
        )
        .unwrap();
        assert_eq!(p.get(Stage::ProveCore).image.as_deref(), Some("registry/proofjobs/task-runner-cuda:1"));
        assert_eq!(p.get(Stage::ProveCore).gpu_min_free_gib, Some(40.0));
        assert_eq!(p.get(Stage::Execute).image, None);
    }

    #[test]
    fn a_group_takes_the_gpu_profile_and_the_largest_memory() {
        let p = StageProfiles::parse(r#"{"execute": {"cpu": "2", "memory": "40Gi"}}"#).unwrap();
        let g = p.for_group(&[Stage::Execute, Stage::Setup]);
        assert_eq!(g.gpus, 1);
        assert_eq!(g.memory, "40Gi");
        assert_eq!(bytes("1Gi"), Some(1 << 30));
        assert!(bytes("2G") < bytes("2Gi"));
    }

    #[test]
    fn a_bad_profile_names_its_stage_and_field() {
        let err = |json: &str| StageProfiles::parse(json).unwrap_err().to_string();
        assert!(err(r#"{"prove-core": {"cpu": "8", "memory": "48Gi", "gpus": "one"}}"#).contains("prove-core.gpus"));
        assert!(err(r#"{"setup": {"cpu": "1", "memory": "1Gi", "gpu": 1}}"#).contains("unknown field `gpu`"));
        assert!(err(r#"{"setup": {"cpu": "1", "memory": "lots"}}"#).contains("setup.memory"));
        assert!(err(r#"{"setup": {"cpu": "four", "memory": "1Gi"}}"#).contains("setup.cpu"));
        assert!(err(r#"{"setup": {"cpu": "1", "memory": "1Gi", "gpus": 64}}"#).contains("setup.gpus"));
        assert!(err(r#"{"execute": {"cpu": "1", "memory": "1Gi", "gpuMinFreeGib": 20}}"#).contains("execute.gpuMinFreeGib"));
        assert!(err(r#"{"wrap": {"cpu": "1", "memory": "1Gi", "tolerations": [{"operator": "Equals"}]}}"#)
            .contains("wrap.tolerations[0].operator"));
        assert!(err(r#"{"prove": {"cpu": "1", "memory": "1Gi"}}"#).contains("unknown stage \"prove\""));
        assert!(err(r#"{"setup": {"memory": "1Gi"}}"#).contains("missing field `cpu`"));
        assert!(StageProfiles::parse(r#"{"setup": {"cpu": "500m", "memory": "512Mi"}}"#).is_ok());
    }
}
