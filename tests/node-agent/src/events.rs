//! The `--events` JSON-lines file: one line per node coming up or going down.
//!
//! Tests read it to compute node-seconds per pool (what an autoscaled cluster would bill), so
//! every line is flushed as it is written and carries a wall-clock millisecond timestamp.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::json;

pub const NODE_UP: &str = "node_up";
pub const NODE_DOWN: &str = "node_down";

#[derive(Default)]
pub struct EventLog {
    file: Option<Mutex<File>>,
}

impl EventLog {
    /// Appends to `path` (created if missing); `None` records nothing.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        let file = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
                }
                Some(Mutex::new(OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("open {}", p.display()))?))
            }
            None => None,
        };
        Ok(Self { file })
    }

    pub fn record(&self, event: &str, node: &str, pool: &str) {
        let Some(file) = &self.file else { return };
        let line = line(unix_ms(), event, node, pool);
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = f.write_all(line.as_bytes()).and_then(|_| f.flush()) {
            tracing::warn!(%err, "writing the events file failed");
        }
    }
}

pub fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// One JSON object and a newline.
pub fn line(t: u128, event: &str, node: &str, pool: &str) -> String {
    let mut s = json!({"t": t as u64, "event": event, "node": node, "pool": pool}).to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("events.jsonl");
        let log = EventLog::open(Some(&path)).unwrap();
        log.record(NODE_UP, "gpu-1", "gpu");
        log.record(NODE_DOWN, "gpu-1", "gpu");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "node_up");
        assert_eq!(lines[1]["event"], "node_down");
        assert_eq!(lines[0]["node"], "gpu-1");
        assert_eq!(lines[0]["pool"], "gpu");
        assert!(lines[0]["t"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(lines[1]["t"].as_u64() >= lines[0]["t"].as_u64());
        EventLog::open(None).unwrap().record(NODE_UP, "x", "y");
    }
}
