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
    /// Parse `{"<stage>": {profile}, ...}`; unknown stage names are an error, not a silent no-op.
    pub fn parse(json: &str) -> Result<StageProfiles> {
        let raw: BTreeMap<String, StageProfile> =
            serde_json::from_str(json).context("stage profiles are not valid JSON of the expected shape")?;
        let mut profiles = StageProfiles::default();
        for (name, profile) in raw {
            let stage = name.parse::<Stage>().map_err(anyhow::Error::msg)?;
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
        let biggest = stages.iter().map(|s| &self.get(*s).memory).max_by_key(|m| bytes(m)).cloned();
        if let Some(memory) = biggest {
            profile.memory = memory;
        }
        profile
    }
}

/// A memory quantity in bytes, for comparisons only (Ki/Mi/Gi/Ti and k/M/G/T suffixes).
fn bytes(q: &str) -> u128 {
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
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.trim().parse::<u128>().unwrap_or(0) * factor;
        }
    }
    q.trim().parse().unwrap_or(0)
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
        assert_eq!(bytes("1Gi"), 1 << 30);
        assert!(bytes("2G") < bytes("2Gi"));
    }
}
