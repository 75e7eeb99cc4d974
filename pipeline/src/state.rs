//! Durable state in PostgreSQL: proofs, tasks, task messages and runners. This is the only place
//! that writes SQL, so the invariants live here: a terminal proof never changes again, a succeeded
//! task stays succeeded, a task is claimed by exactly one runner (`FOR UPDATE SKIP LOCKED`), and a
//! lost runner's tasks go back to the queue. Every write fires `NOTIFY proofjobs, <proof id>`
//! (triggers in the migration), which [`Notifications`] turns into wake-ups.

use std::{collections::BTreeMap, str::FromStr, time::Duration};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use sqlx::{postgres::PgPoolOptions, PgPool, Row};
use tokio::sync::broadcast;

use crate::stage::{Mode, Stage};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How often a task may be started before its failure fails the proof.
pub const MAX_TASK_ATTEMPTS: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl ProofStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProofStatus::Pending => "pending",
            ProofStatus::Running => "running",
            ProofStatus::Completed => "completed",
            ProofStatus::Failed => "failed",
            ProofStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, ProofStatus::Completed | ProofStatus::Failed | ProofStatus::Cancelled)
    }
}

impl FromStr for ProofStatus {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => ProofStatus::Pending,
            "running" => ProofStatus::Running,
            "completed" => ProofStatus::Completed,
            "failed" => ProofStatus::Failed,
            "cancelled" => ProofStatus::Cancelled,
            other => anyhow::bail!("unknown proof status {other:?} in the database"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    fn parse(s: &str) -> TaskState {
        match s {
            "pending" => TaskState::Pending,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "cancelled" => TaskState::Cancelled,
            _ => TaskState::Failed,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }
}

#[derive(Debug, Clone)]
pub struct ProofRow {
    pub id: String,
    pub mode: Mode,
    pub status: ProofStatus,
    pub program_artifact: String,
    pub stdin_artifact: String,
    pub proof_artifact: String,
    pub cycle_limit: Option<i64>,
    pub deadline: DateTime<Utc>,
    pub requester: Vec<u8>,
    pub failure_cause: Option<String>,
    pub cycles: Option<i64>,
    pub public_values: Option<Vec<u8>>,
    pub gas_limit: Option<i64>,
    pub handled: bool,
    pub metadata: String,
    pub extra_data: Option<String>,
    pub scheduled_by: Option<String>,
    pub stdin_private: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl ProofRow {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<ProofRow> {
        Ok(ProofRow {
            id: row.try_get("id")?,
            mode: row
                .try_get::<String, _>("mode")?
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?,
            status: row.try_get::<String, _>("status")?.parse()?,
            program_artifact: row.try_get("program_artifact")?,
            stdin_artifact: row.try_get("stdin_artifact")?,
            proof_artifact: row.try_get("proof_artifact")?,
            cycle_limit: row.try_get("cycle_limit")?,
            deadline: row.try_get("deadline")?,
            requester: row.try_get("requester")?,
            failure_cause: row.try_get("failure_cause")?,
            cycles: row.try_get("cycles")?,
            public_values: row.try_get("public_values")?,
            gas_limit: row.try_get("gas_limit")?,
            handled: row.try_get("handled")?,
            metadata: row.try_get("metadata")?,
            extra_data: row.try_get("extra_data")?,
            scheduled_by: row.try_get("scheduled_by")?,
            stdin_private: row.try_get("stdin_private")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}

/// A new proof request, with the artifacts it reads already in the store.
#[derive(Debug, Clone)]
pub struct NewProof {
    pub id: String,
    pub mode: Mode,
    pub program_artifact: String,
    pub stdin_artifact: String,
    pub proof_artifact: String,
    pub cycle_limit: Option<i64>,
    pub deadline: DateTime<Utc>,
    pub idempotency_key: Option<String>,
    pub requester: Vec<u8>,
    pub gas_limit: Option<i64>,
    pub scheduled_by: Option<String>,
    pub stdin_private: bool,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    Created,
    /// The idempotency key (or client-chosen id) was used before: this is that proof.
    Existing(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    AlreadyFinished(ProofStatus),
    NotFound,
}

#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub id: String,
    pub proof_id: String,
    pub task_type: i32,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub parent_id: Option<String>,
    pub requester: String,
    pub attempts: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageProgress {
    pub total: i64,
    pub done: i64,
    pub running: i64,
    pub pending: i64,
    pub failed: i64,
}

impl StageProgress {
    pub fn state(&self) -> &'static str {
        if self.failed > 0 {
            "failed"
        } else if self.total > 0 && self.done == self.total {
            "done"
        } else if self.running > 0 || self.done > 0 {
            "running"
        } else {
            "pending"
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunnerRow {
    pub id: String,
    pub proof_id: String,
    pub stages: Vec<Stage>,
    pub backend: String,
    pub handle: String,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(15))
            .connect(url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))?;
        Ok(Db { pool })
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await.context("applying database migrations")
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    // ---- proofs ----

    /// Insert a proof and its first task in one transaction. A repeated idempotency key or proof id
    /// returns the proof that already holds it instead of creating a twin.
    pub async fn insert_proof(&self, proof: &NewProof, first_task: &NewTask) -> Result<InsertOutcome> {
        if let Some(key) = &proof.idempotency_key {
            if let Some(id) = sqlx::query_scalar::<_, String>("SELECT id FROM proofs WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
            {
                return Ok(InsertOutcome::Existing(id));
            }
        }
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO proofs (id, mode, program_artifact, stdin_artifact, proof_artifact, cycle_limit, deadline,
                                 idempotency_key, requester, gas_limit, scheduled_by, stdin_private)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) ON CONFLICT DO NOTHING",
        )
        .bind(&proof.id)
        .bind(proof.mode.as_str())
        .bind(&proof.program_artifact)
        .bind(&proof.stdin_artifact)
        .bind(&proof.proof_artifact)
        .bind(proof.cycle_limit)
        .bind(proof.deadline)
        .bind(&proof.idempotency_key)
        .bind(&proof.requester)
        .bind(proof.gas_limit)
        .bind(&proof.scheduled_by)
        .bind(proof.stdin_private)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            // Either the id or the idempotency key raced with another insert.
            let existing = sqlx::query_scalar::<_, String>(
                "SELECT id FROM proofs WHERE id = $1 OR idempotency_key = $2 LIMIT 1",
            )
            .bind(&proof.id)
            .bind(&proof.idempotency_key)
            .fetch_one(&self.pool)
            .await?;
            return Ok(InsertOutcome::Existing(existing));
        }
        insert_task(&mut *tx, &proof.id, first_task).await?;
        tx.commit().await?;
        Ok(InsertOutcome::Created)
    }

    pub async fn get_proof(&self, id: &str) -> Result<Option<ProofRow>> {
        let row = sqlx::query("SELECT * FROM proofs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(ProofRow::from_row).transpose()
    }

    /// Proofs in creation order, newest last; `statuses` empty means all.
    pub async fn list_proofs(&self, statuses: &[ProofStatus], limit: i64, offset: i64) -> Result<Vec<ProofRow>> {
        let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        let rows = sqlx::query(
            "SELECT * FROM proofs WHERE (cardinality($1::text[]) = 0 OR status = ANY($1))
             ORDER BY created_at, id LIMIT $2 OFFSET $3",
        )
        .bind(&statuses)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ProofRow::from_row).collect()
    }

    pub async fn cancel_proof(&self, id: &str, cause: &str) -> Result<CancelOutcome> {
        match self.get_proof(id).await? {
            None => Ok(CancelOutcome::NotFound),
            Some(p) if p.status.is_terminal() => Ok(CancelOutcome::AlreadyFinished(p.status)),
            Some(_) => {
                if self.finish_proof(id, ProofStatus::Cancelled, Some(cause), None, None).await? {
                    Ok(CancelOutcome::Cancelled)
                } else {
                    let status = self.get_proof(id).await?.map(|p| p.status).unwrap_or(ProofStatus::Cancelled);
                    Ok(CancelOutcome::AlreadyFinished(status))
                }
            }
        }
    }

    /// Move a proof to a terminal status, once. Its unfinished tasks are cancelled with it.
    /// Returns false when the proof had already finished (a late completion never overwrites a
    /// cancel, and a cancel never overwrites a completion).
    pub async fn finish_proof(
        &self,
        id: &str,
        status: ProofStatus,
        cause: Option<&str>,
        cycles: Option<i64>,
        public_values: Option<&[u8]>,
    ) -> Result<bool> {
        debug_assert!(status.is_terminal());
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE proofs SET status = $2, failure_cause = $3, cycles = COALESCE($4, cycles),
                    public_values = COALESCE($5, public_values), finished_at = now(), updated_at = now()
             WHERE id = $1 AND status IN ('pending', 'running')",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(cause)
        .bind(cycles)
        .bind(public_values)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 1 {
            sqlx::query(
                "UPDATE tasks SET status = 'cancelled', finished_at = now()
                 WHERE proof_id = $1 AND status IN ('pending', 'running')",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(updated == 1)
    }

    pub async fn mark_proof_running(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE proofs SET status = 'running', updated_at = now() WHERE id = $1 AND status = 'pending'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn record_runner_failure(&self, id: &str) -> Result<i32> {
        Ok(sqlx::query_scalar("UPDATE proofs SET runner_failures = runner_failures + 1 WHERE id = $1 RETURNING runner_failures")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }

    /// sp1-cluster's ProofRequestUpdate: fields its fulfillers own.
    pub async fn update_cluster_fields(
        &self,
        id: &str,
        handled: Option<bool>,
        metadata: Option<&str>,
        extra_data: Option<&str>,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE proofs SET handled = COALESCE($2, handled), metadata = COALESCE($3, metadata),
                    extra_data = COALESCE($4, extra_data), deadline = COALESCE($5, deadline), updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(handled)
        .bind(metadata)
        .bind(extra_data)
        .bind(deadline)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn active_proofs(&self) -> Result<Vec<ProofRow>> {
        let rows = sqlx::query("SELECT * FROM proofs WHERE status IN ('pending', 'running') ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(ProofRow::from_row).collect()
    }

    /// Per-stage task counts of a proof.
    pub async fn stage_progress(&self, proof_id: &str) -> Result<BTreeMap<Stage, StageProgress>> {
        let rows = sqlx::query(
            "SELECT stage, count(*) AS total,
                    count(*) FILTER (WHERE status = 'succeeded') AS done,
                    count(*) FILTER (WHERE status = 'running') AS running,
                    count(*) FILTER (WHERE status = 'pending') AS pending,
                    count(*) FILTER (WHERE status = 'failed') AS failed
             FROM tasks WHERE proof_id = $1 AND stage IS NOT NULL GROUP BY stage",
        )
        .bind(proof_id)
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let stage: String = row.try_get("stage")?;
            let stage = stage.parse::<Stage>().map_err(|e| anyhow::anyhow!(e))?;
            out.insert(
                stage,
                StageProgress {
                    total: row.try_get("total")?,
                    done: row.try_get("done")?,
                    running: row.try_get("running")?,
                    pending: row.try_get("pending")?,
                    failed: row.try_get("failed")?,
                },
            );
        }
        Ok(out)
    }

    // ---- tasks ----

    pub async fn submit_task(&self, proof_id: &str, task: &NewTask) -> Result<()> {
        insert_task(&self.pool, proof_id, task).await
    }

    /// Hand one pending task of `stages` of `proof_id` to `runner_id`.
    pub async fn claim_task(&self, proof_id: &str, stages: &[Stage], runner_id: &str) -> Result<Option<ClaimedTask>> {
        let stages: Vec<&str> = stages.iter().map(|s| s.as_str()).collect();
        let row = sqlx::query(
            "UPDATE tasks SET status = 'running', runner_id = $3, attempts = attempts + 1, started_at = now()
             WHERE id = (SELECT id FROM tasks WHERE proof_id = $1 AND stage = ANY($2) AND status = 'pending'
                         ORDER BY created_at, id FOR UPDATE SKIP LOCKED LIMIT 1)
               AND EXISTS (SELECT 1 FROM proofs WHERE id = $1 AND status IN ('pending', 'running'))
             RETURNING id, proof_id, task_type, inputs, outputs, parent_id, requester, attempts",
        )
        .bind(proof_id)
        .bind(&stages)
        .bind(runner_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ClaimedTask {
                id: row.try_get("id")?,
                proof_id: row.try_get("proof_id")?,
                task_type: row.try_get("task_type")?,
                inputs: row.try_get("inputs")?,
                outputs: row.try_get("outputs")?,
                parent_id: row.try_get("parent_id")?,
                requester: row.try_get("requester")?,
                attempts: row.try_get("attempts")?,
            })
        })
        .transpose()
    }

    /// Succeeded is final: a late duplicate or failure never downgrades it.
    pub async fn complete_task(&self, task_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE tasks SET status = 'succeeded', finished_at = now(), error = NULL
             WHERE id = $1 AND status IN ('pending', 'running')",
        )
        .bind(task_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A task run failed. Retryable failures go back to the queue while attempts remain.
    /// Returns the task's new state.
    pub async fn fail_task(&self, task_id: &str, error: &str, retryable: bool) -> Result<TaskState> {
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE tasks SET
                status = CASE WHEN $3 AND attempts < $4 THEN 'pending' ELSE 'failed' END,
                runner_id = NULL, error = $2,
                finished_at = CASE WHEN $3 AND attempts < $4 THEN NULL ELSE now() END
             WHERE id = $1 AND status = 'running' RETURNING status",
        )
        .bind(task_id)
        .bind(error)
        .bind(retryable)
        .bind(MAX_TASK_ATTEMPTS)
        .fetch_optional(&self.pool)
        .await?;
        Ok(status.map(|s| TaskState::parse(&s)).unwrap_or(TaskState::Failed))
    }

    pub async fn task_states(&self, ids: &[String]) -> Result<Vec<(String, TaskState)>> {
        let rows = sqlx::query("SELECT id, status FROM tasks WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| Ok((row.try_get("id")?, TaskState::parse(&row.try_get::<String, _>("status")?))))
            .collect()
    }

    /// Stages of a proof that have work waiting for a runner.
    pub async fn stages_with_pending_tasks(&self, proof_id: &str) -> Result<Vec<Stage>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT stage FROM tasks WHERE proof_id = $1 AND status = 'pending' AND stage IS NOT NULL",
        )
        .bind(proof_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|s| s.parse::<Stage>().map_err(|e| anyhow::anyhow!(e))).collect()
    }

    /// Is there pending or running work for any of `stages` in this proof?
    pub async fn has_open_tasks(&self, proof_id: &str, stages: &[Stage]) -> Result<bool> {
        let stages: Vec<&str> = stages.iter().map(|s| s.as_str()).collect();
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE proof_id = $1 AND stage = ANY($2) AND status IN ('pending', 'running'))",
        )
        .bind(proof_id)
        .bind(&stages)
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

    // ---- task messages ----

    pub async fn send_message(&self, task_id: &str, payload: &[u8]) -> Result<()> {
        let n = sqlx::query(
            "INSERT INTO task_messages (task_id, proof_id, payload) SELECT id, proof_id, $2 FROM tasks WHERE id = $1",
        )
        .bind(task_id)
        .bind(payload)
        .execute(&self.pool)
        .await?
        .rows_affected();
        anyhow::ensure!(n == 1, "no task {task_id} to send a message on");
        Ok(())
    }

    pub async fn messages_after(&self, task_id: &str, after: i64) -> Result<Vec<(i64, Vec<u8>)>> {
        Ok(sqlx::query_as("SELECT seq, payload FROM task_messages WHERE task_id = $1 AND seq > $2 ORDER BY seq")
            .bind(task_id)
            .bind(after)
            .fetch_all(&self.pool)
            .await?)
    }

    // ---- runners ----

    pub async fn register_runner(&self, id: &str, proof_id: &str, stages: &[Stage], backend: &str, handle: &str) -> Result<()> {
        let stages: Vec<&str> = stages.iter().map(|s| s.as_str()).collect();
        sqlx::query(
            "INSERT INTO runners (id, proof_id, stages, backend, handle) VALUES ($1,$2,$3,$4,$5)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(proof_id)
        .bind(&stages)
        .bind(backend)
        .bind(handle)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many runners a backend has started for this group of a proof's stages: the next
    /// one's attempt number.
    pub async fn runner_attempts(&self, proof_id: &str, stages: &[Stage], backend: &str) -> Result<u32> {
        let stages: Vec<&str> = stages.iter().map(|s| s.as_str()).collect();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM runners WHERE proof_id = $1 AND stages = $2 AND backend = $3")
            .bind(proof_id)
            .bind(&stages)
            .bind(backend)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u32)
    }

    pub async fn set_runner_handle(&self, id: &str, handle: &str) -> Result<()> {
        sqlx::query("UPDATE runners SET handle = $2 WHERE id = $1").bind(id).bind(handle).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn runner_heartbeat(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE runners SET heartbeat_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record a runner's end (once) and put its unfinished tasks back in the queue.
    pub async fn runner_exited(&self, id: &str, exit_code: Option<i32>, error: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE runners SET exited_at = now(), exit_code = $2, error = COALESCE($3, error)
             WHERE id = $1 AND exited_at IS NULL",
        )
        .bind(id)
        .bind(exit_code)
        .bind(error)
        .execute(&self.pool)
        .await?;
        self.requeue_runner_tasks(id).await?;
        Ok(())
    }

    /// A runner's own last words (e.g. why its input was bad), read by the dispatcher on exit.
    pub async fn set_runner_error(&self, id: &str, error: &str) -> Result<()> {
        sqlx::query("UPDATE runners SET error = $2 WHERE id = $1").bind(id).bind(error).execute(&self.pool).await?;
        Ok(())
    }

    /// The GPU a runner proves on, as it found it at start.
    pub async fn set_runner_device(&self, id: &str, device: &str) -> Result<()> {
        sqlx::query("UPDATE runners SET device = $2 WHERE id = $1").bind(id).bind(device).execute(&self.pool).await?;
        Ok(())
    }

    /// The GPU the newest pod of a Kubernetes runner group (`handle` = its Job) found.
    pub async fn group_device(&self, handle: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT device FROM runners WHERE handle = $1 AND device IS NOT NULL ORDER BY started_at DESC LIMIT 1",
        )
        .bind(handle)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn runner_error(&self, id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar::<_, Option<String>>("SELECT error FROM runners WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .flatten())
    }

    pub async fn live_runners(&self, backend: &str) -> Result<Vec<RunnerRow>> {
        let rows = sqlx::query(
            "SELECT id, proof_id, stages, backend, handle, heartbeat_at, started_at FROM runners
             WHERE exited_at IS NULL AND backend = $1 ORDER BY started_at",
        )
        .bind(backend)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let stages: Vec<String> = row.try_get("stages")?;
                Ok(RunnerRow {
                    id: row.try_get("id")?,
                    proof_id: row.try_get("proof_id")?,
                    stages: stages.iter().map(|s| s.parse::<Stage>().map_err(|e| anyhow::anyhow!(e))).collect::<Result<_>>()?,
                    backend: row.try_get("backend")?,
                    handle: row.try_get("handle")?,
                    heartbeat_at: row.try_get("heartbeat_at")?,
                    started_at: row.try_get("started_at")?,
                })
            })
            .collect()
    }
}

async fn insert_task<'e, E: sqlx::PgExecutor<'e>>(executor: E, proof_id: &str, task: &NewTask) -> Result<()> {
    sqlx::query(
        "INSERT INTO tasks (id, proof_id, task_type, stage, inputs, outputs, parent_id, requester)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
    )
    .bind(&task.id)
    .bind(proof_id)
    .bind(task.task_type)
    .bind(task.stage.map(|s| s.as_str()))
    .bind(&task.inputs)
    .bind(&task.outputs)
    .bind(&task.parent_id)
    .bind(&task.requester)
    .execute(executor)
    .await?;
    Ok(())
}

/// A URL fit for logs: the password replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Wake-ups from `NOTIFY proofjobs, <proof id>`. One LISTEN connection per process; waiters filter
/// by proof id and also re-check on a timer, so a notification lost in a reconnect costs latency,
/// never correctness.
#[derive(Clone)]
pub struct Notifications {
    tx: broadcast::Sender<String>,
}

impl Notifications {
    pub async fn listen(db: &Db) -> Result<Notifications> {
        let mut listener = sqlx::postgres::PgListener::connect_with(db.pool()).await?;
        listener.listen("proofjobs").await?;
        let (tx, _) = broadcast::channel(4096);
        let sender = tx.clone();
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(n) => {
                        let _ = sender.send(n.payload().to_string());
                    }
                    Err(e) => {
                        tracing::warn!("notification listener: {e}; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(Notifications { tx })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }
}

/// Wait until a notification about `proof_id` arrives (or any, when `proof_id` is None), or
/// `timeout` passes.
pub async fn wait_for(rx: &mut broadcast::Receiver<String>, proof_id: Option<&str>, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        loop {
            match rx.recv().await {
                Ok(id) if proof_id.is_none_or(|p| p == id) => return,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep(timeout).await;
                    return;
                }
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
