//! The task bus: `sp1_prover::worker::WorkerClient` implemented on the durable state, so the SP1
//! controller running in one runner hands tasks to runners of other stages (other processes or
//! pods) without a coordinator holding anything in memory. Submitting a task inserts a row;
//! runners claim rows; subscribers and message readers wake on NOTIFY and re-read, so a runner
//! keeps going across a dispatcher restart.

use std::{collections::HashSet, sync::Arc, time::Duration};

use sp1_prover::worker::{ProofId, RawTaskRequest, SubscriberBuilder, TaskId, TaskMetadata, WorkerClient};
use sp1_prover_types::{ProofRequestStatus, TaskStatus, TaskType};
use tokio::sync::mpsc;

use crate::{
    ids,
    stage::Stage,
    state::{Db, NewTask, Notifications, ProofStatus, TaskState},
};

/// How long a waiter sleeps without a notification before it re-reads anyway.
const RECHECK: Duration = Duration::from_millis(1000);

#[derive(Clone)]
pub struct PgBus {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    notifications: Notifications,
}

impl PgBus {
    pub fn new(db: Db, notifications: Notifications) -> PgBus {
        PgBus { inner: Arc::new(Inner { db, notifications }) }
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn notifications(&self) -> &Notifications {
        &self.inner.notifications
    }
}

fn to_sp1_status(state: TaskState) -> Option<TaskStatus> {
    match state {
        TaskState::Succeeded => Some(TaskStatus::Succeeded),
        TaskState::Failed | TaskState::Cancelled => Some(TaskStatus::FailedFatal),
        TaskState::Pending | TaskState::Running => None,
    }
}

impl WorkerClient for PgBus {
    async fn submit_task(&self, kind: TaskType, task: RawTaskRequest) -> anyhow::Result<TaskId> {
        let id = ids::new_task_id();
        let new = NewTask {
            id: id.clone(),
            task_type: kind as i32,
            stage: Stage::of_task(kind),
            inputs: task.inputs.into_iter().map(|a| a.0).collect(),
            outputs: task.outputs.into_iter().map(|a| a.0).collect(),
            parent_id: task.context.parent_id.map(|t| t.to_string()),
            requester: task.context.requester_id.to_string(),
        };
        self.inner.db.submit_task(&task.context.proof_id.to_string(), &new).await?;
        tracing::debug!(task = %id, kind = kind.as_str_name(), "task submitted");
        Ok(TaskId::new(id))
    }

    async fn complete_task(&self, _proof_id: ProofId, task_id: TaskId, _metadata: TaskMetadata) -> anyhow::Result<()> {
        // SP1 reports here what it finished itself (bookkeeping tasks, work done inside the
        // controller); tasks runners claim are finished under their claim instead.
        self.inner.db.complete_unclaimed_task(&task_id.to_string()).await
    }

    async fn complete_proof(
        &self,
        proof_id: ProofId,
        _task_id: Option<TaskId>,
        status: ProofRequestStatus,
        extra_data: impl Into<String> + Send,
    ) -> anyhow::Result<()> {
        let status = match status {
            ProofRequestStatus::Completed => ProofStatus::Completed,
            ProofRequestStatus::Cancelled => ProofStatus::Cancelled,
            _ => ProofStatus::Failed,
        };
        let extra: String = extra_data.into();
        let cause = (!extra.is_empty()).then_some(extra.as_str());
        self.inner.db.finish_proof(&proof_id.to_string(), status, cause, None, None).await?;
        Ok(())
    }

    async fn subscriber(&self, proof_id: ProofId) -> anyhow::Result<SubscriberBuilder<Self>> {
        let (watch_tx, mut watch_rx) = mpsc::unbounded_channel::<TaskId>();
        let (status_tx, status_rx) = mpsc::unbounded_channel::<(TaskId, TaskStatus)>();
        let db = self.inner.db.clone();
        let mut wake = self.inner.notifications.subscribe();
        let proof = proof_id.to_string();
        tokio::spawn(async move {
            let mut watched: HashSet<String> = HashSet::new();
            // The subscribing side may drop its sender once it has named every task it cares
            // about (the SP1 compress tree does); those tasks are still reported until done.
            let mut more_to_come = true;
            loop {
                while more_to_come {
                    match watch_rx.try_recv() {
                        Ok(id) => {
                            watched.insert(id.to_string());
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => more_to_come = false,
                    }
                }
                if !watched.is_empty() {
                    let ids: Vec<String> = watched.iter().cloned().collect();
                    match db.task_states(&ids).await {
                        Ok(states) => {
                            for (id, state) in states {
                                if let Some(status) = to_sp1_status(state) {
                                    watched.remove(&id);
                                    if status_tx.send((TaskId::new(id), status)).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        Err(e) => tracing::warn!("subscriber for {proof}: {e:#}"),
                    }
                }
                if (!more_to_come && watched.is_empty()) || status_tx.is_closed() {
                    return;
                }
                tokio::select! {
                    id = watch_rx.recv(), if more_to_come => match id {
                        Some(id) => { watched.insert(id.to_string()); }
                        None => more_to_come = false,
                    },
                    _ = crate::state::wait_for(&mut wake, Some(&proof), RECHECK) => {}
                }
            }
        });
        Ok(SubscriberBuilder::new(self.clone(), watch_tx, status_rx))
    }

    async fn subscribe_task_messages(&self, task_id: &TaskId) -> anyhow::Result<mpsc::UnboundedReceiver<Vec<u8>>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let db = self.inner.db.clone();
        let mut wake = self.inner.notifications.subscribe();
        let task = task_id.to_string();
        // Wake-ups are per proof; a reader that cannot tell its proof yet re-reads on the timer.
        let proof = self.inner.db.task_proof_id(&task).await.ok().flatten();
        tokio::spawn(async move {
            let mut last = 0i64;
            loop {
                // Read the task's state before its messages: a producer sends before it completes,
                // so once it is seen finished, one more read drains everything it sent.
                let finished = match db.task_states(std::slice::from_ref(&task)).await {
                    Ok(states) => states.first().is_some_and(|(_, s)| s.is_terminal()),
                    Err(e) => {
                        tracing::warn!("message reader for {task}: {e:#}");
                        false
                    }
                };
                match db.messages_after(&task, last).await {
                    Ok(messages) => {
                        for (seq, payload) in messages {
                            last = seq;
                            if tx.send(payload).is_err() {
                                return;
                            }
                        }
                        if finished {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("message reader for {task}: {e:#}"),
                }
                if tx.is_closed() {
                    return;
                }
                crate::state::wait_for(&mut wake, Some(proof.as_deref().unwrap_or("")), RECHECK).await;
            }
        });
        Ok(rx)
    }

    async fn send_task_message(&self, task_id: &TaskId, payload: Vec<u8>) -> anyhow::Result<()> {
        self.inner.db.send_message(&task_id.to_string(), &payload).await
    }
}
