//! The `tasks` table: the stage DAG of each proof as the SP1 controller submits it. A runner
//! claims a task (`FOR UPDATE SKIP LOCKED`) and holds the claim — its id and the attempt number —
//! until it finishes the task; a finish from anyone else (a runner declared gone whose process
//! wakes up late) changes nothing.

use std::str::FromStr;

use anyhow::Result;

use super::{Db, MAX_TASK_ATTEMPTS};
use crate::stage::Stage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 5] = [TaskState::Pending, TaskState::Running, TaskState::Succeeded, TaskState::Failed, TaskState::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| format!("unknown task status {s:?}"))
    }
}

#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub task_type: i32,
    pub stage: Option<Stage>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub parent_id: Option<String>,
    pub requester: String,
}

/// Who holds a task: the runner that claimed it, on which attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub runner_id: String,
    pub attempt: i32,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedTask {
    pub id: String,
    pub proof_id: String,
    pub task_type: i32,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub parent_id: Option<String>,
    pub requester: String,
    pub runner_id: String,
    pub attempts: i32,
}

impl ClaimedTask {
    pub fn claim(&self) -> Claim {
        Claim { runner_id: self.runner_id.clone(), attempt: self.attempts }
    }
}

pub(super) async fn insert_task<'e, E: sqlx::PgExecutor<'e>>(executor: E, proof_id: &str, task: &NewTask) -> Result<()> {
    sqlx::query(
        "INSERT INTO tasks (id, proof_id, task_type, stage, inputs, outputs, parent_id, requester)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
    )
    .bind(&task.id)
    .bind(proof_id)
    .bind(task.task_type)
    .bind(task.stage)
    .bind(&task.inputs)
    .bind(&task.outputs)
    .bind(&task.parent_id)
    .bind(&task.requester)
    .execute(executor)
    .await?;
    Ok(())
}

impl Db {
    pub async fn submit_task(&self, proof_id: &str, task: &NewTask) -> Result<()> {
        insert_task(&self.pool, proof_id, task).await
    }

    /// Hand one pending task of `stages` of `proof_id` to `runner_id`.
    pub async fn claim_task(&self, proof_id: &str, stages: &[Stage], runner_id: &str) -> Result<Option<ClaimedTask>> {
        Ok(sqlx::query_as(
            "UPDATE tasks SET status = 'running', runner_id = $3, attempts = attempts + 1, started_at = now()
             WHERE id = (SELECT id FROM tasks WHERE proof_id = $1 AND stage = ANY($2) AND status = 'pending'
                         ORDER BY created_at, id FOR UPDATE SKIP LOCKED LIMIT 1)
               AND EXISTS (SELECT 1 FROM proofs WHERE id = $1 AND status IN ('pending', 'running'))
             RETURNING id, proof_id, task_type, inputs, outputs, parent_id, requester, runner_id, attempts",
        )
        .bind(proof_id)
        .bind(stages)
        .bind(runner_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The holder of `claim` finished the task. Returns false, changing nothing, when the claim
    /// is no longer held (the task was handed back and claimed again, or already finished).
    pub async fn complete_task(&self, task_id: &str, claim: &Claim) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE tasks SET status = 'succeeded', finished_at = now(), error = NULL
             WHERE id = $1 AND status = 'running' AND runner_id = $2 AND attempts = $3",
        )
        .bind(task_id)
        .bind(&claim.runner_id)
        .bind(claim.attempt)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// SP1 marks a task done that no runner claims (its bookkeeping tasks, or one it ran inside
    /// the controller). Succeeded is final: a late duplicate never downgrades it.
    pub async fn complete_unclaimed_task(&self, task_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET status = 'succeeded', finished_at = now(), error = NULL
             WHERE id = $1 AND status IN ('pending', 'running')",
        )
        .bind(task_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The holder of `claim` failed the task. Retryable failures go back to the queue while
    /// attempts remain. Returns the task's new state; `None` when the claim is no longer held
    /// (nothing changed).
    pub async fn fail_task(&self, task_id: &str, claim: &Claim, error: &str, retryable: bool) -> Result<Option<TaskState>> {
        Ok(sqlx::query_scalar(
            "UPDATE tasks SET
                status = CASE WHEN $3 AND attempts < $4 THEN 'pending' ELSE 'failed' END,
                runner_id = NULL, error = $2,
                finished_at = CASE WHEN $3 AND attempts < $4 THEN NULL ELSE now() END
             WHERE id = $1 AND status = 'running' AND runner_id = $5 AND attempts = $6 RETURNING status",
        )
        .bind(task_id)
        .bind(error)
        .bind(retryable)
        .bind(MAX_TASK_ATTEMPTS)
        .bind(&claim.runner_id)
        .bind(claim.attempt)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn task_states(&self, ids: &[String]) -> Result<Vec<(String, TaskState)>> {
        Ok(sqlx::query_as("SELECT id, status FROM tasks WHERE id = ANY($1)").bind(ids).fetch_all(&self.pool).await?)
    }

    /// Who holds a task now (`None` when nobody does).
    pub async fn task_claim(&self, task_id: &str) -> Result<Option<Claim>> {
        let row: Option<(Option<String>, i32)> =
            sqlx::query_as("SELECT runner_id, attempts FROM tasks WHERE id = $1 AND status = 'running'")
                .bind(task_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(runner, attempt)| runner.map(|runner_id| Claim { runner_id, attempt })))
    }

    /// (proof, stage) pairs of active proofs that have work waiting for a runner.
    pub async fn pending_stages(&self) -> Result<Vec<(String, Stage)>> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT t.proof_id, t.stage FROM tasks t JOIN proofs p ON p.id = t.proof_id
             WHERE t.status = 'pending' AND t.stage IS NOT NULL AND p.status IN ('pending', 'running')",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Is there pending or running work for any of `stages` in this proof?
    pub async fn has_open_tasks(&self, proof_id: &str, stages: &[Stage]) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE proof_id = $1 AND stage = ANY($2) AND status IN ('pending', 'running'))",
        )
        .bind(proof_id)
        .bind(stages)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Put the running tasks of a lost runner back in the queue. A lost CONTROLLER takes the
    /// proof's in-memory DAG with it: its other unfinished tasks are cancelled, and the controller
    /// starts the proof over when it runs again.
    pub async fn requeue_runner_tasks(&self, runner_id: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let lost: Vec<(String, String, i32)> = sqlx::query_as(
            "UPDATE tasks SET status = 'pending', runner_id = NULL, started_at = NULL
             WHERE runner_id = $1 AND status = 'running' RETURNING id, proof_id, task_type",
        )
        .bind(runner_id)
        .fetch_all(&mut *tx)
        .await?;
        let controller = sp1_prover_types::TaskType::Controller as i32;
        for (task_id, proof_id, task_type) in &lost {
            if *task_type == controller {
                sqlx::query(
                    "UPDATE tasks SET status = 'cancelled', finished_at = now(), error = 'controller restarted'
                     WHERE proof_id = $1 AND id <> $2 AND status IN ('pending', 'running')",
                )
                .bind(proof_id)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(lost.len() as u64)
    }

    pub async fn task_proof_id(&self, task_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT proof_id FROM tasks WHERE id = $1").bind(task_id).fetch_optional(&self.pool).await?)
    }
}
