//! Settings and handles shared by every fake node and pod worker of the fleet.
//!
//! One value, built once in main and passed around as `Arc<AgentContext>`, instead of threading
//! a dozen arguments through node → watcher → worker.

use std::path::PathBuf;
use std::time::Duration;

use kube::Client;

use crate::images::ImageMap;
use crate::logs::LogRegistry;

pub struct AgentContext {
    pub client: Client,
    pub images: ImageMap,
    /// PATH/HOME/TMPDIR of the agent (the only host variables a pod process inherits) and the
    /// apiserver's KUBERNETES_SERVICE_HOST/PORT.
    pub base_env: Vec<(String, String)>,
    /// Absolute; holds `logs/` and `pods/`.
    pub work_dir: PathBuf,
    pub logs: LogRegistry,
    /// Port of the HTTPS log server, published as each node's kubelet endpoint.
    pub log_port: u16,
    /// Upper bound on a pod's terminationGracePeriodSeconds.
    pub max_grace: Duration,
    pub lease_interval: Duration,
    pub ready_interval: Duration,
}

/// The agent's own PATH/HOME/TMPDIR, in that order, skipping unset ones.
pub fn base_env_from_host() -> Vec<(String, String)> {
    ["PATH", "HOME", "TMPDIR"].iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect()
}
