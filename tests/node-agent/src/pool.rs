//! Node pools: the `--pool` flag and what a pool's nodes look like.
//!
//! A pool is a template for identical fake nodes (capacity, labels, taints) plus the bounds the
//! fake autoscaler keeps it within. Node registration and the autoscaler's fit check both read
//! it, so the template lives here, apart from either.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;

pub const POOL_LABEL: &str = "proofjobs.io/pool";
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
pub const GPU_PRESENT_LABEL: &str = "nvidia.com/gpu.present";
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Marks every Node this tool created, so a person can find (and clean up) them.
pub const MANAGED_LABEL: &str = "proofjobs.io/node-agent";
pub const MAX_PODS: u32 = 110;

/// One `--pool NAME:key=value,...` flag.
///
/// Keys: `min`, `max`, `cpu`, `memory`, `gpus`, and repeatable `label=k=v` and
/// `taint=k=v:Effect` (or `taint=k:Effect`) for extra labels and taints.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    pub min: usize,
    pub max: usize,
    pub cpu: String,
    pub memory: String,
    pub gpus: u32,
    pub extra_labels: BTreeMap<String, String>,
    pub extra_taints: Vec<Taint>,
}

impl FromStr for PoolSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, rest) =
            s.split_once(':').with_context(|| format!("pool {s:?}: expected NAME:min=..,max=..,cpu=..,memory=..[,gpus=..]"))?;
        if !is_dns_label(name) {
            bail!("pool name {name:?} is not a DNS label (lowercase letters, digits, '-')");
        }
        let mut spec = PoolSpec {
            name: name.to_string(),
            min: 0,
            max: 1,
            cpu: "8".into(),
            memory: "32Gi".into(),
            gpus: 0,
            extra_labels: BTreeMap::new(),
            extra_taints: Vec::new(),
        };
        for item in rest.split(',').filter(|i| !i.trim().is_empty()) {
            let (key, value) = item.split_once('=').with_context(|| format!("pool {name}: {item:?} is not key=value"))?;
            let value = value.trim();
            match key.trim() {
                "min" => spec.min = value.parse().with_context(|| format!("pool {name}: min={value}"))?,
                "max" => spec.max = value.parse().with_context(|| format!("pool {name}: max={value}"))?,
                "cpu" => {
                    quantity::cpu_millis(value).with_context(|| format!("pool {name}: cpu={value} is not a quantity"))?;
                    spec.cpu = value.to_string();
                }
                "memory" => {
                    quantity::bytes(value).with_context(|| format!("pool {name}: memory={value} is not a quantity"))?;
                    spec.memory = value.to_string();
                }
                "gpus" => spec.gpus = value.parse().with_context(|| format!("pool {name}: gpus={value}"))?,
                "label" => {
                    let (k, v) = value.split_once('=').with_context(|| format!("pool {name}: label={value} is not k=v"))?;
                    spec.extra_labels.insert(k.to_string(), v.to_string());
                }
                "taint" => spec.extra_taints.push(parse_taint(value).with_context(|| format!("pool {name}"))?),
                other => bail!("pool {name}: unknown key {other:?}"),
            }
        }
        if spec.min > spec.max {
            bail!("pool {name}: min {} > max {}", spec.min, spec.max);
        }
        Ok(spec)
    }
}

/// `key=value:Effect` or `key:Effect`.
fn parse_taint(s: &str) -> Result<Taint> {
    let (kv, effect) = s.rsplit_once(':').with_context(|| format!("taint {s:?}: expected key[=value]:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        bail!("taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (kv.to_string(), None),
    };
    if key.is_empty() {
        bail!("taint {s:?}: empty key");
    }
    Ok(Taint { key, value, effect: effect.to_string(), time_added: None })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 50
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl PoolSpec {
    pub fn is_gpu(&self) -> bool {
        self.gpus > 0
    }

    pub fn node_name(&self, index: usize) -> String {
        format!("{}-{}", self.name, index)
    }

    /// Labels every node of the pool carries (everything except the per-node hostname); the
    /// autoscaler matches node selectors against these.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert(POOL_LABEL.to_string(), self.name.clone());
        labels.insert(INSTANCE_TYPE_LABEL.to_string(), format!("fake-{}", self.name));
        labels.insert("kubernetes.io/os".to_string(), "linux".to_string());
        labels.insert("kubernetes.io/arch".to_string(), "amd64".to_string());
        labels.insert(MANAGED_LABEL.to_string(), "true".to_string());
        if self.is_gpu() {
            labels.insert(GPU_PRESENT_LABEL.to_string(), "true".to_string());
        }
        for (k, v) in &self.extra_labels {
            labels.insert(k.clone(), v.clone());
        }
        labels
    }

    /// Labels of one node: the pool's plus its hostname.
    pub fn node_labels(&self, node: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels();
        labels.insert(HOSTNAME_LABEL.to_string(), node.to_string());
        labels
    }

    pub fn taints(&self) -> Vec<Taint> {
        let mut taints = Vec::new();
        if self.is_gpu() {
            taints.push(Taint {
                key: GPU_RESOURCE.to_string(),
                value: Some("true".to_string()),
                effect: "NoSchedule".to_string(),
                time_added: None,
            });
        }
        taints.extend(self.extra_taints.iter().cloned());
        taints
    }

    /// Node capacity (also used as allocatable).
    pub fn capacity(&self) -> BTreeMap<String, Quantity> {
        let mut cap = BTreeMap::new();
        cap.insert("cpu".to_string(), Quantity(self.cpu.clone()));
        cap.insert("memory".to_string(), Quantity(self.memory.clone()));
        cap.insert("pods".to_string(), Quantity(MAX_PODS.to_string()));
        cap.insert("ephemeral-storage".to_string(), Quantity("100Gi".to_string()));
        if self.is_gpu() {
            cap.insert(GPU_RESOURCE.to_string(), Quantity(self.gpus.to_string()));
        }
        cap
    }

    pub fn cpu_millis(&self) -> u64 {
        quantity::cpu_millis(&self.cpu).unwrap_or(0)
    }

    pub fn memory_bytes(&self) -> u64 {
        quantity::bytes(&self.memory).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_pool() {
        let p: PoolSpec = "cpu:min=1,max=2,cpu=16,memory=64Gi".parse().unwrap();
        assert_eq!(p.name, "cpu");
        assert_eq!((p.min, p.max, p.gpus), (1, 2, 0));
        assert_eq!(p.cpu_millis(), 16_000);
        assert_eq!(p.memory_bytes(), 64 << 30);
        assert!(!p.is_gpu());
        assert!(p.taints().is_empty());
        let labels = p.node_labels("cpu-1");
        assert_eq!(labels[POOL_LABEL], "cpu");
        assert_eq!(labels[HOSTNAME_LABEL], "cpu-1");
        assert_eq!(labels[INSTANCE_TYPE_LABEL], "fake-cpu");
        assert!(!labels.contains_key(GPU_PRESENT_LABEL));
        assert!(!p.capacity().contains_key(GPU_RESOURCE));
        assert_eq!(p.capacity()["pods"].0, "110");
    }

    #[test]
    fn parses_gpu_pool_with_extras() {
        let p: PoolSpec = "gpu:min=0,max=2,cpu=16,memory=64Gi,gpus=1,label=suite=proc,taint=suite=proc:NoSchedule".parse().unwrap();
        assert!(p.is_gpu());
        assert_eq!(p.node_name(3), "gpu-3");
        let labels = p.labels();
        assert_eq!(labels[GPU_PRESENT_LABEL], "true");
        assert_eq!(labels["suite"], "proc");
        let taints = p.taints();
        assert_eq!(taints.len(), 2);
        assert_eq!(taints[0].key, GPU_RESOURCE);
        assert_eq!(taints[0].value.as_deref(), Some("true"));
        assert_eq!(taints[0].effect, "NoSchedule");
        assert_eq!(taints[1].key, "suite");
        assert_eq!(p.capacity()[GPU_RESOURCE].0, "1");
    }

    #[test]
    fn rejects_bad_pools() {
        assert!("cpu".parse::<PoolSpec>().is_err());
        assert!("CPU:max=1".parse::<PoolSpec>().is_err());
        assert!("cpu:min=3,max=2".parse::<PoolSpec>().is_err());
        assert!("cpu:max=1,cpu=lots".parse::<PoolSpec>().is_err());
        assert!("cpu:max=1,colour=red".parse::<PoolSpec>().is_err());
        assert!("cpu:max=1,taint=a=b:Sometimes".parse::<PoolSpec>().is_err());
    }
}
