//! What is left of proofs once they end. A proof that ended is swept once: its intermediate
//! artifacts are deleted and its inputs and output given their retention (`dispatcher/src/
//! sweep.rs` does the store side); long after, its rows are purged in batches. Both steps are
//! recorded here so that they survive a dispatcher restart and run once.

use std::collections::HashSet;

use anyhow::Result;
use chrono::{DateTime, Utc};

use super::Db;

/// An ended proof that has not been swept yet.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EndedProof {
    pub id: String,
    pub program_artifact: String,
    pub stdin_artifact: String,
    pub proof_artifact: String,
}

impl Db {
    /// Ended proofs not swept yet that ended before `settled` and have no runner left alive
    /// (a runner still writing would leave new intermediates behind), oldest first.
    pub async fn unswept_proofs(&self, settled: DateTime<Utc>, limit: i64) -> Result<Vec<EndedProof>> {
        Ok(sqlx::query_as(
            "SELECT id, program_artifact, stdin_artifact, proof_artifact FROM proofs p
             WHERE status IN ('completed', 'failed', 'cancelled') AND swept_at IS NULL AND finished_at < $1
               AND NOT EXISTS (SELECT 1 FROM runners r WHERE r.proof_id = p.id AND r.exited_at IS NULL AND r.reaped_at IS NULL
                                                          AND r.backend <> 'kubernetes')
             ORDER BY finished_at LIMIT $2",
        )
        .bind(settled)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every artifact id the proof's tasks named, its program, stdin and output left out.
    pub async fn intermediate_artifacts(&self, proof: &EndedProof) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT a FROM tasks, unnest(inputs || outputs) AS a WHERE proof_id = $1 AND a <> ALL($2) ORDER BY a",
        )
        .bind(&proof.id)
        .bind([&proof.program_artifact, &proof.stdin_artifact, &proof.proof_artifact])
        .fetch_all(&self.pool)
        .await?)
    }

    /// Which of `ids` an unfinished proof still reads as its program or stdin.
    pub async fn inputs_in_use(&self, ids: &[String]) -> Result<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT a FROM unnest($1::text[]) AS a WHERE EXISTS (
                 SELECT 1 FROM proofs WHERE status IN ('pending', 'running') AND a IN (program_artifact, stdin_artifact))",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn mark_swept(&self, proof_id: &str) -> Result<()> {
        sqlx::query("UPDATE proofs SET swept_at = now() WHERE id = $1").bind(proof_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Deletes up to `batch` swept proofs that ended before `cutoff`, with everything recorded
    /// about them (task messages first, then the proof, whose tasks, runners, tokens and quotes
    /// go with it, and the claims of artifact ids no remaining proof names). One transaction per
    /// batch keeps locks short; returns how many proofs went.
    pub async fn purge_batch(&self, cutoff: DateTime<Utc>, batch: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let doomed: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM proofs WHERE swept_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(cutoff)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        if doomed.is_empty() {
            return Ok(0);
        }
        sqlx::query("DELETE FROM task_messages WHERE proof_id = ANY($1)").bind(&doomed).execute(&mut *tx).await?;
        sqlx::query(
            "DELETE FROM artifact_claims c USING proofs p
             WHERE p.id = ANY($1) AND c.artifact_id IN (p.program_artifact, p.stdin_artifact, p.proof_artifact)
               AND NOT EXISTS (SELECT 1 FROM proofs o WHERE o.id <> ALL($1)
                                 AND c.artifact_id IN (o.program_artifact, o.stdin_artifact, o.proof_artifact))",
        )
        .bind(&doomed)
        .execute(&mut *tx)
        .await?;
        let purged = sqlx::query("DELETE FROM proofs WHERE id = ANY($1)").bind(&doomed).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(purged)
    }
}
