//! The `proofs` table: one row per proof request, from intake to its terminal status.

use std::{collections::BTreeMap, str::FromStr};

use anyhow::Result;
use chrono::{DateTime, Utc};

use super::{tasks::insert_task, Db, NewTask};
use crate::stage::{Mode, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl ProofStatus {
    pub const ALL: [ProofStatus; 5] =
        [ProofStatus::Pending, ProofStatus::Running, ProofStatus::Completed, ProofStatus::Failed, ProofStatus::Cancelled];

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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ProofStatus::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| format!("unknown proof status {s:?}"))
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
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
    /// The authenticated requester the proof belongs to (`anonymous` when the api runs without
    /// keys; "" for proofs made before keys existed).
    pub owner: String,
    pub failure_cause: Option<String>,
    pub cycles: Option<i64>,
    pub public_values: Option<Vec<u8>>,
    pub gas_limit: Option<i64>,
    pub handled: bool,
    pub metadata: String,
    pub extra_data: Option<String>,
    pub scheduled_by: Option<String>,
    pub stdin_private: bool,
    /// Why a pending proof has not started (`queued-over-quota`).
    pub waiting: Option<String>,
    /// The quote the proof was submitted with, to set its estimate against the actual figures.
    pub quote_id: Option<String>,
    /// When the proof's leftovers were cleaned up after it ended (see `lifecycle.rs`).
    pub swept_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An unfinished proof as the dispatcher reads it each pass.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActiveHead {
    pub id: String,
    pub status: ProofStatus,
    pub deadline: DateTime<Utc>,
    pub owner: String,
    pub waiting: Option<String>,
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
    /// The authenticated requester (see [`ProofRow::owner`]).
    pub owner: String,
    pub gas_limit: Option<i64>,
    pub scheduled_by: Option<String>,
    pub stdin_private: bool,
    pub quote_id: Option<String>,
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

#[derive(sqlx::FromRow)]
struct ProgressRow {
    proof_id: String,
    stage: Stage,
    total: i64,
    done: i64,
    running: i64,
    pending: i64,
    failed: i64,
}

impl Db {
    /// Insert a proof and its first task in one transaction. A repeated idempotency key or proof id
    /// returns the proof that already holds it instead of creating a twin.
    pub async fn insert_proof(&self, proof: &NewProof, first_task: &NewTask) -> Result<InsertOutcome> {
        if let Some(key) = &proof.idempotency_key {
            if let Some(id) = self.proof_for_idempotency_key(&proof.owner, key).await? {
                return Ok(InsertOutcome::Existing(id));
            }
        }
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO proofs (id, mode, program_artifact, stdin_artifact, proof_artifact, cycle_limit, deadline,
                                 idempotency_key, requester, gas_limit, scheduled_by, stdin_private, owner, quote_id)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14) ON CONFLICT DO NOTHING",
        )
        .bind(&proof.id)
        .bind(proof.mode)
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
        .bind(&proof.owner)
        .bind(&proof.quote_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            // Either the id or the idempotency key raced with another insert.
            let existing =
                sqlx::query_scalar::<_, String>("SELECT id FROM proofs WHERE id = $1 OR (owner = $3 AND idempotency_key = $2) LIMIT 1")
                    .bind(&proof.id)
                    .bind(&proof.idempotency_key)
                    .bind(&proof.owner)
                    .fetch_one(&self.pool)
                    .await?;
            return Ok(InsertOutcome::Existing(existing));
        }
        insert_task(&mut *tx, &proof.id, first_task).await?;
        tx.commit().await?;
        Ok(InsertOutcome::Created)
    }

    /// The proof `owner` first used an idempotency key for (keys are per requester).
    pub async fn proof_for_idempotency_key(&self, owner: &str, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM proofs WHERE owner = $1 AND idempotency_key = $2")
            .bind(owner)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn get_proof(&self, id: &str) -> Result<Option<ProofRow>> {
        Ok(sqlx::query_as("SELECT * FROM proofs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
    }

    /// Proofs in creation order, newest last; `statuses` empty means all, `owner` None means
    /// every requester's.
    pub async fn list_proofs(&self, statuses: &[ProofStatus], owner: Option<&str>, limit: i64, offset: i64) -> Result<Vec<ProofRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM proofs WHERE (cardinality($1::text[]) = 0 OR status = ANY($1)) AND ($4::text IS NULL OR owner = $4)
             ORDER BY created_at, id LIMIT $2 OFFSET $3",
        )
        .bind(statuses)
        .bind(limit)
        .bind(offset)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?)
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
        .bind(status)
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
        sqlx::query("UPDATE proofs SET status = 'running', waiting = NULL, updated_at = now() WHERE id = $1 AND status = 'pending'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
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

    /// Says why a pending proof waits (`None`: it no longer does).
    pub async fn set_proof_waiting(&self, id: &str, waiting: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE proofs SET waiting = $2, updated_at = now() WHERE id = $1 AND status = 'pending'")
            .bind(id)
            .bind(waiting)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every unfinished proof, oldest first: what the dispatcher's passes read.
    pub async fn active_proof_heads(&self) -> Result<Vec<ActiveHead>> {
        Ok(sqlx::query_as(
            "SELECT id, status, deadline, owner, waiting FROM proofs WHERE status IN ('pending', 'running') ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn count_active_proofs(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM proofs WHERE status IN ('pending', 'running')").fetch_one(&self.pool).await?)
    }

    /// When each of `ids` finished (`None`: not finished); proofs that do not exist are absent.
    pub async fn finish_times(&self, ids: &[String]) -> Result<Vec<(String, Option<DateTime<Utc>>)>> {
        Ok(sqlx::query_as("SELECT id, finished_at FROM proofs WHERE id = ANY($1)").bind(ids).fetch_all(&self.pool).await?)
    }

    /// Per-stage task counts of a proof.
    pub async fn stage_progress(&self, proof_id: &str) -> Result<BTreeMap<Stage, StageProgress>> {
        let mut all = self.stage_progress_of(&[proof_id.to_string()]).await?;
        Ok(all.remove(proof_id).unwrap_or_default())
    }

    /// Per-stage task counts of several proofs, in one query.
    pub async fn stage_progress_of(&self, proof_ids: &[String]) -> Result<BTreeMap<String, BTreeMap<Stage, StageProgress>>> {
        let rows: Vec<ProgressRow> = sqlx::query_as(
            "SELECT proof_id, stage, count(*) AS total,
                    count(*) FILTER (WHERE status = 'succeeded') AS done,
                    count(*) FILTER (WHERE status = 'running') AS running,
                    count(*) FILTER (WHERE status = 'pending') AS pending,
                    count(*) FILTER (WHERE status = 'failed') AS failed
             FROM tasks WHERE proof_id = ANY($1) AND stage IS NOT NULL GROUP BY proof_id, stage",
        )
        .bind(proof_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<String, BTreeMap<Stage, StageProgress>> = BTreeMap::new();
        for r in rows {
            let progress = StageProgress { total: r.total, done: r.done, running: r.running, pending: r.pending, failed: r.failed };
            out.entry(r.proof_id).or_default().insert(r.stage, progress);
        }
        Ok(out)
    }
}
