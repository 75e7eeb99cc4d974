//! Quotes and the history they are estimated from. A quote is stored under the id of the
//! execute-mode proof that measured its cycles; the history is this cluster's own completed
//! proofs of a mode, each with its cycles, wall time and usage, so estimates follow the hardware,
//! the settings and the load the cluster actually has.

use anyhow::Result;
use chrono::{DateTime, Utc};

use super::{usage::usage_query, Db, Usage};
use crate::stage::Mode;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct QuoteRow {
    pub id: String,
    pub owner: String,
    pub mode: Mode,
    pub cycles: i64,
    /// How many completed proofs of the mode the rates come from (0: no estimate).
    pub basis_proofs: i32,
    /// From submission to the proof done, scale-up included.
    pub eta_secs: f64,
    /// The part of `eta_secs` spent waiting for a GPU node to start.
    pub scale_up_secs: f64,
    #[sqlx(flatten)]
    pub usage: Usage,
    pub cost_usd: f64,
    pub created_at: DateTime<Utc>,
}

/// One completed proof as a quote learns from it.
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct HistoryPoint {
    pub cycles: i64,
    /// From submission to completion.
    pub wall_secs: f64,
    #[sqlx(flatten)]
    pub usage: Usage,
}

impl Db {
    pub async fn insert_quote(&self, quote: &QuoteRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO quotes (id, owner, mode, cycles, basis_proofs, eta_secs, scale_up_secs,
                                 cpu_task_secs, gpu_task_secs, cpu_runner_secs, gpu_runner_secs, cost_usd, created_at)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
        )
        .bind(&quote.id)
        .bind(&quote.owner)
        .bind(quote.mode)
        .bind(quote.cycles)
        .bind(quote.basis_proofs)
        .bind(quote.eta_secs)
        .bind(quote.scale_up_secs)
        .bind(quote.usage.cpu_task_secs)
        .bind(quote.usage.gpu_task_secs)
        .bind(quote.usage.cpu_runner_secs)
        .bind(quote.usage.gpu_runner_secs)
        .bind(quote.cost_usd)
        .bind(quote.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_quote(&self, id: &str) -> Result<Option<QuoteRow>> {
        Ok(sqlx::query_as("SELECT * FROM quotes WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
    }

    /// The latest `limit` completed proofs of `mode` that ran at least one cycle, newest first.
    pub async fn history(&self, mode: Mode, limit: i64) -> Result<Vec<HistoryPoint>> {
        let query = format!(
            "{} GROUP BY p.id, p.cycles, p.created_at, p.finished_at ORDER BY p.finished_at DESC",
            usage_query(
                "p.cycles AS cycles, extract(epoch FROM p.finished_at - p.created_at)::float8 AS wall_secs,",
                "p.id IN (SELECT id FROM proofs WHERE mode = $1 AND status = 'completed' AND cycles > 0
                          ORDER BY finished_at DESC LIMIT $2)"
            )
        );
        Ok(sqlx::query_as(&query).bind(mode).bind(limit).fetch_all(&self.pool).await?)
    }

    /// Whether a GPU runner was alive at or after `since`: its node may still be up, so a GPU
    /// stage need not wait for one to start.
    pub async fn gpu_runner_seen_since(&self, since: DateTime<Utc>) -> Result<bool> {
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM runners WHERE gpus > 0 AND coalesce(exited_at, reaped_at, now()) >= $1)")
            .bind(since)
            .fetch_one(&self.pool)
            .await?)
    }
}
