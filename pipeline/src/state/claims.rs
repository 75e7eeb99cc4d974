//! The `artifact_claims` table: which requester an artifact id belongs to, so that a proof
//! request can only read (and write) artifacts of its own requester. An id is claimed by the
//! first request that names it, or when the api makes it.

use anyhow::Result;

use super::Db;

impl Db {
    /// Claims every id in `ids` for `owner`, all or none: returns the ids another requester
    /// holds (then nothing was claimed), or nothing when `owner` now holds them all.
    pub async fn claim_artifacts(&self, owner: &str, ids: &[String]) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO artifact_claims (artifact_id, owner) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING")
            .bind(ids)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        // Read after the insert: a claim another request made at the same moment is seen here.
        let foreign: Vec<String> =
            sqlx::query_scalar("SELECT artifact_id FROM artifact_claims WHERE artifact_id = ANY($1) AND owner <> $2 ORDER BY artifact_id")
                .bind(ids)
                .bind(owner)
                .fetch_all(&mut *tx)
                .await?;
        if foreign.is_empty() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(foreign)
    }
}
