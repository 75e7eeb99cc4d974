//! What proofs used: task-seconds and runner-seconds on CPU and GPU runners, per proof and per
//! requester, and the estimated cost from the pools' hourly prices. Runner-seconds (a runner's
//! lifetime, start-up and idle time included) are what the cluster pays for; task-seconds are
//! the work itself. A runner counts as GPU when it recorded the GPUs its pod asked for.

use anyhow::Result;
use chrono::{DateTime, Utc};

use super::Db;

#[derive(Debug, Clone, Copy, Default, PartialEq, sqlx::FromRow)]
pub struct Usage {
    pub cpu_task_secs: f64,
    pub gpu_task_secs: f64,
    pub cpu_runner_secs: f64,
    pub gpu_runner_secs: f64,
}

/// USD per hour of a CPU and a GPU runner (0 when not set).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prices {
    pub cpu_usd_per_hour: f64,
    pub gpu_usd_per_hour: f64,
}

impl Usage {
    pub fn estimated_cost_usd(&self, prices: &Prices) -> f64 {
        (self.cpu_runner_secs * prices.cpu_usd_per_hour + self.gpu_runner_secs * prices.gpu_usd_per_hour) / 3600.0
    }
}

/// One requester's use over a period.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RequesterUsage {
    pub owner: String,
    pub proofs: i64,
    #[sqlx(flatten)]
    pub usage: Usage,
}

/// Usage of the proofs `proof_filter` selects (`p` is the proofs table), grouped by `group`.
/// Job rows of the Kubernetes backend stand for their pods, which have rows of their own, so
/// only the pods' are counted.
pub(super) fn usage_query(group: &str, proof_filter: &str) -> String {
    format!(
        "WITH p AS (SELECT id, owner, cycles, created_at, finished_at FROM proofs p WHERE {proof_filter}),
         t AS (SELECT t.proof_id, sum(extract(epoch FROM t.finished_at - t.started_at)) FILTER (WHERE r.gpus > 0) AS gpu,
                      sum(extract(epoch FROM t.finished_at - t.started_at)) FILTER (WHERE coalesce(r.gpus, 0) = 0) AS cpu
               FROM tasks t JOIN p ON p.id = t.proof_id LEFT JOIN runners r ON r.id = t.runner_id
               WHERE t.started_at IS NOT NULL AND t.finished_at IS NOT NULL GROUP BY t.proof_id),
         r AS (SELECT r.proof_id,
                      sum(extract(epoch FROM coalesce(r.exited_at, r.reaped_at, now()) - r.started_at)) FILTER (WHERE r.gpus > 0) AS gpu,
                      sum(extract(epoch FROM coalesce(r.exited_at, r.reaped_at, now()) - r.started_at)) FILTER (WHERE r.gpus = 0) AS cpu
               FROM runners r JOIN p ON p.id = r.proof_id WHERE r.backend <> 'kubernetes' GROUP BY r.proof_id)
         SELECT {group} count(*) AS proofs,
                coalesce(sum(t.cpu), 0)::float8 AS cpu_task_secs, coalesce(sum(t.gpu), 0)::float8 AS gpu_task_secs,
                coalesce(sum(r.cpu), 0)::float8 AS cpu_runner_secs, coalesce(sum(r.gpu), 0)::float8 AS gpu_runner_secs
         FROM p LEFT JOIN t ON t.proof_id = p.id LEFT JOIN r ON r.proof_id = p.id"
    )
}

impl Db {
    /// Records the GPUs a runner's pod asked for (0: a CPU runner, the default).
    pub async fn set_runner_gpus(&self, runner_id: &str, gpus: i32) -> Result<()> {
        sqlx::query("UPDATE runners SET gpus = $2 WHERE id = $1").bind(runner_id).bind(gpus).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn proof_usage(&self, proof_id: &str) -> Result<Usage> {
        Ok(sqlx::query_as(&usage_query("", "p.id = $1")).bind(proof_id).fetch_one(&self.pool).await?)
    }

    /// Per requester, the proofs created at or after `since`, busiest (by runner-seconds) first.
    pub async fn usage_by_requester(&self, since: DateTime<Utc>) -> Result<Vec<RequesterUsage>> {
        let query = format!(
            "{} GROUP BY p.owner ORDER BY sum(coalesce(r.cpu, 0) + coalesce(r.gpu, 0)) DESC, p.owner",
            usage_query("p.owner AS owner,", "p.created_at >= $1")
        );
        Ok(sqlx::query_as(&query).bind(since).fetch_all(&self.pool).await?)
    }

    pub async fn prices(&self) -> Result<Prices> {
        let rows: Vec<(String, f64)> = sqlx::query_as("SELECT pool, usd_per_hour FROM pool_prices").fetch_all(&self.pool).await?;
        let price = |pool: &str| rows.iter().find(|(p, _)| p == pool).map(|(_, v)| *v).unwrap_or(0.0);
        Ok(Prices { cpu_usd_per_hour: price("cpu"), gpu_usd_per_hour: price("gpu") })
    }

    /// Sets a pool's hourly price (`cpu` or `gpu`).
    pub async fn set_price(&self, pool: &str, usd_per_hour: f64) -> Result<()> {
        anyhow::ensure!(pool == "cpu" || pool == "gpu", "pool {pool:?}: expected cpu or gpu");
        anyhow::ensure!(usd_per_hour.is_finite() && usd_per_hour >= 0.0, "price {usd_per_hour} must be a non-negative number");
        sqlx::query(
            "INSERT INTO pool_prices (pool, usd_per_hour) VALUES ($1, $2)
             ON CONFLICT (pool) DO UPDATE SET usd_per_hour = EXCLUDED.usd_per_hour, updated_at = now()",
        )
        .bind(pool)
        .bind(usd_per_hour)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_runner_hours_at_each_pools_price() {
        let usage = Usage { cpu_task_secs: 10.0, gpu_task_secs: 20.0, cpu_runner_secs: 3600.0, gpu_runner_secs: 1800.0 };
        let prices = Prices { cpu_usd_per_hour: 0.4, gpu_usd_per_hour: 1.0 };
        assert!((usage.estimated_cost_usd(&prices) - 0.9).abs() < 1e-9);
        assert_eq!(Usage::default().estimated_cost_usd(&prices), 0.0);
    }
}
