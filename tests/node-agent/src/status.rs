//! Pod status documents the fake kubelet writes.
//!
//! The Job controller reads only a few fields (phase, containerStatuses[].state.terminated,
//! conditions; see docs section 4 of the k8s testing notes), but the apiserver validates the
//! rest, so the shapes mirror what a real kubelet sends. Building them is pure; the worker
//! sends them as strategic-merge patches on `pods/status` (conditions merge by type).

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::pod::LOOPBACK;

pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";
pub const RUNNING: &str = "Running";

pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// Succeeded and Failed are final: a pod never leaves them.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), SUCCEEDED | FAILED)
}

pub fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether a container of this pod was already reported as started (by an earlier incarnation
/// of the agent, since this one reports starts only for processes it owns).
pub fn reported_started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.state.as_ref().is_some_and(|st| st.running.is_some())))
}

/// How a container ended, for the terminal status.
#[derive(Clone, Debug, PartialEq)]
pub struct Termination {
    pub container: String,
    pub image: String,
    pub exit_code: i32,
    /// `Completed` / `Error`, or why the container never ran.
    pub reason: String,
    pub message: Option<String>,
    pub signal: Option<i32>,
    pub pid: Option<u32>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    /// Set when the container never ran: also reported as the pod's reason.
    pub pod_reason: Option<String>,
}

/// The container reason a runtime reports for an exit code.
pub fn exit_reason(code: i32) -> &'static str {
    if code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

pub fn image_id(image: &str) -> String {
    format!("node-agent://{image}")
}

pub fn container_id(pid: u32) -> String {
    format!("process://{pid}")
}

/// A condition; keeps the existing lastTransitionTime when the status does not change.
fn condition(pod: &Pod, type_: &str, status: bool, reason: Option<&str>, now: Timestamp) -> PodCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let last_transition_time = match previous {
        Some(c) if c.status == status && c.last_transition_time.is_some() => c.last_transition_time.clone(),
        _ => Some(Time(now)),
    };
    PodCondition { type_: type_.to_string(), status, reason: reason.map(str::to_string), last_transition_time, ..Default::default() }
}

fn start_time(pod: &Pod, fallback: Timestamp) -> Time {
    pod.status.as_ref().and_then(|s| s.start_time.clone()).unwrap_or(Time(fallback))
}

fn addresses(status: &mut PodStatus) {
    status.host_ip = Some(LOOPBACK.to_string());
    status.host_ips = Some(vec![HostIP { ip: LOOPBACK.to_string() }]);
    status.pod_ip = Some(LOOPBACK.to_string());
    status.pod_ips = Some(vec![PodIP { ip: LOOPBACK.to_string() }]);
}

/// Status right after the process started.
pub fn running(pod: &Pod, container: &str, image: &str, pid: u32, started_at: Timestamp) -> PodStatus {
    let now = started_at;
    let mut status = PodStatus {
        phase: Some(RUNNING.to_string()),
        start_time: Some(start_time(pod, now)),
        conditions: Some(vec![
            condition(pod, "PodReadyToStartContainers", true, None, now),
            condition(pod, "Initialized", true, None, now),
            condition(pod, "Ready", true, None, now),
            condition(pod, "ContainersReady", true, None, now),
            condition(pod, "PodScheduled", true, None, now),
        ]),
        container_statuses: Some(vec![ContainerStatus {
            name: container.to_string(),
            image: image.to_string(),
            image_id: image_id(image),
            container_id: Some(container_id(pid)),
            ready: true,
            started: Some(true),
            restart_count: 0,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning { started_at: Some(Time(started_at)) }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    addresses(&mut status);
    status
}

/// Final status: Succeeded for exit code 0, Failed otherwise.
pub fn terminated(pod: &Pod, t: &Termination) -> PodStatus {
    let now = t.finished_at;
    let phase = if t.exit_code == 0 && t.pod_reason.is_none() { SUCCEEDED } else { FAILED };
    let mut status = PodStatus {
        phase: Some(phase.to_string()),
        reason: t.pod_reason.clone(),
        message: t.pod_reason.as_ref().and(t.message.clone()),
        start_time: Some(start_time(pod, t.started_at.unwrap_or(now))),
        conditions: Some(vec![
            condition(pod, "PodReadyToStartContainers", false, None, now),
            condition(pod, "Initialized", true, None, now),
            condition(pod, "Ready", false, Some("PodCompleted"), now),
            condition(pod, "ContainersReady", false, Some("PodCompleted"), now),
            condition(pod, "PodScheduled", true, None, now),
        ]),
        container_statuses: Some(vec![ContainerStatus {
            name: t.container.clone(),
            image: t.image.clone(),
            image_id: image_id(&t.image),
            container_id: t.pid.map(container_id),
            ready: false,
            started: Some(false),
            restart_count: 0,
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: t.exit_code,
                    reason: Some(t.reason.clone()),
                    message: t.message.clone(),
                    signal: t.signal,
                    started_at: t.started_at.map(Time),
                    finished_at: Some(Time(now)),
                    container_id: t.pid.map(container_id),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    addresses(&mut status);
    status
}

/// The patch body. `metadata.uid` makes the apiserver refuse the patch if the pod was
/// replaced by another with the same name (the kubelet does the same).
pub fn patch_body(pod: &Pod, status: &PodStatus) -> serde_json::Value {
    json!({
        "metadata": {"uid": pod.metadata.uid},
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
            "spec": {"containers": [{"name": "c", "image": "img"}]},
            "status": status
        }))
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn phases() {
        assert!(!is_terminal(&pod(json!({}))));
        assert_eq!(phase(&pod(json!({}))), "Pending");
        assert!(!is_terminal(&pod(json!({"phase": "Running"}))));
        assert!(is_terminal(&pod(json!({"phase": "Succeeded"}))));
        assert!(is_terminal(&pod(json!({"phase": "Failed"}))));
        assert!(!reported_started(&pod(json!({"phase": "Pending"}))));
        assert!(reported_started(&pod(json!({"phase": "Running",
            "containerStatuses": [{"name": "c", "image": "img", "imageID": "", "ready": true, "restartCount": 0,
              "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]}))));
    }

    #[test]
    fn running_status_shape() {
        let p = pod(json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}]
        }));
        let s = running(&p, "c", "img:1", 4242, ts("2025-01-01T00:00:05Z"));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["phase"], "Running");
        assert_eq!(v["startTime"], "2025-01-01T00:00:05Z");
        assert_eq!(v["podIP"], "127.0.0.1");
        assert_eq!(v["hostIP"], "127.0.0.1");
        assert_eq!(v["podIPs"][0]["ip"], "127.0.0.1");
        let cs = &v["containerStatuses"][0];
        assert_eq!(cs["name"], "c");
        assert_eq!(cs["image"], "img:1");
        assert_eq!(cs["imageID"], "node-agent://img:1");
        assert_eq!(cs["containerID"], "process://4242");
        assert_eq!(cs["ready"], true);
        assert_eq!(cs["started"], true);
        assert_eq!(cs["restartCount"], 0);
        assert_eq!(cs["state"]["running"]["startedAt"], "2025-01-01T00:00:05Z");
        for t in ["Initialized", "Ready", "ContainersReady", "PodScheduled"] {
            assert_eq!(cond(&s, t).status, "True", "{t}");
        }
        // Unchanged condition keeps its transition time.
        assert_eq!(cond(&s, "PodScheduled").last_transition_time, Some(Time(ts("2025-01-01T00:00:00Z"))));
        assert_eq!(cond(&s, "Ready").last_transition_time, Some(Time(ts("2025-01-01T00:00:05Z"))));
    }

    fn term(code: i32, signal: Option<i32>) -> Termination {
        Termination {
            container: "c".into(),
            image: "img".into(),
            exit_code: code,
            reason: exit_reason(code).into(),
            message: None,
            signal,
            pid: Some(7),
            started_at: Some(ts("2025-01-01T00:00:05Z")),
            finished_at: ts("2025-01-01T00:01:00Z"),
            pod_reason: None,
        }
    }

    #[test]
    fn exit_zero_succeeds() {
        let p = pod(json!({"phase": "Running", "startTime": "2025-01-01T00:00:04Z"}));
        let s = terminated(&p, &term(0, None));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["phase"], "Succeeded");
        assert_eq!(v["startTime"], "2025-01-01T00:00:04Z");
        let t = &v["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(t["exitCode"], 0);
        assert_eq!(t["reason"], "Completed");
        assert_eq!(t["startedAt"], "2025-01-01T00:00:05Z");
        assert_eq!(t["finishedAt"], "2025-01-01T00:01:00Z");
        assert_eq!(v["containerStatuses"][0]["ready"], false);
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
        assert_eq!(cond(&s, "ContainersReady").status, "False");
        assert!(v.get("reason").is_none());
    }

    #[test]
    fn nonzero_and_signals_fail() {
        let p = pod(json!({"phase": "Running"}));
        let v = serde_json::to_value(terminated(&p, &term(3, None))).unwrap();
        assert_eq!(v["phase"], "Failed");
        assert_eq!(v["containerStatuses"][0]["state"]["terminated"]["exitCode"], 3);
        assert_eq!(v["containerStatuses"][0]["state"]["terminated"]["reason"], "Error");
        let v = serde_json::to_value(terminated(&p, &term(137, Some(9)))).unwrap();
        assert_eq!(v["phase"], "Failed");
        assert_eq!(v["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137);
        assert_eq!(v["containerStatuses"][0]["state"]["terminated"]["signal"], 9);
    }

    #[test]
    fn never_started_failure_reports_reason() {
        let p = pod(json!({"phase": "Pending"}));
        let t = Termination {
            reason: "ImageNotMapped".into(),
            message: Some("no binary".into()),
            pod_reason: Some("ImageNotMapped".into()),
            exit_code: 127,
            started_at: None,
            pid: None,
            ..term(127, None)
        };
        let v = serde_json::to_value(terminated(&p, &t)).unwrap();
        assert_eq!(v["phase"], "Failed");
        assert_eq!(v["reason"], "ImageNotMapped");
        assert_eq!(v["message"], "no binary");
        assert_eq!(v["startTime"], "2025-01-01T00:01:00Z");
        let term = &v["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(term["exitCode"], 127);
        assert_eq!(term["reason"], "ImageNotMapped");
        assert!(term.get("startedAt").is_none());
    }

    #[test]
    fn patch_carries_uid_precondition() {
        let p = pod(json!({}));
        let body = patch_body(&p, &running(&p, "c", "img", 1, ts("2025-01-01T00:00:00Z")));
        assert_eq!(body["metadata"]["uid"], "u-1");
        assert_eq!(body["status"]["phase"], "Running");
    }
}
