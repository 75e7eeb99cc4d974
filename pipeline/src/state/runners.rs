//! The `runners` table (one row per runner process, Job or pod, written by whoever starts it and
//! by the runner itself: heartbeat, device, last words) and `runner_groups`, the retry state of
//! each proof's runner groups. Both are durable so that a restarted dispatcher keeps counting
//! failures and honouring backoff where the last one stopped.

use std::collections::HashSet;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use super::Db;
use crate::stage::Stage;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RunnerRow {
    pub id: String,
    pub proof_id: String,
    pub stages: Vec<Stage>,
    pub backend: String,
    pub handle: String,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    /// The runner's own last words (e.g. why its input was bad), when it left any.
    pub error: Option<String>,
    /// Set when the runner recorded its own end (the dispatcher may not have acted on it yet).
    pub exited_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
}

impl RunnerRow {
    /// When the runner last showed it was alive: its heartbeat, or its start before the first.
    pub fn last_seen(&self) -> DateTime<Utc> {
        self.heartbeat_at.unwrap_or(self.started_at).max(self.started_at)
    }
}

/// The retry state of one runner group of one proof.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct GroupState {
    pub proof_id: String,
    pub stages: Vec<Stage>,
    /// Runners that crashed, were killed or hung (counted against the proof).
    pub failures: i32,
    /// Runners that handed their work back (exit 69 or 75): not the proof's fault, but capped.
    pub retries: i32,
    /// No runner of the group starts before this.
    pub not_before: Option<DateTime<Utc>>,
    /// How many runners of the group any backend has started (the next one's attempt number).
    pub launches: i64,
}

const RUNNER_COLUMNS: &str = "id, proof_id, stages, backend, handle, heartbeat_at, started_at, error, exited_at, exit_code";

impl Db {
    /// A fresh token for a runner of `proof_id` (only its SHA-256 is kept). A runner connecting
    /// with it as a member of the `proofjobs_runner` role sees and writes that proof's rows only.
    pub async fn issue_runner_token(&self, proof_id: &str) -> Result<String> {
        let token = crate::ids::new_secret();
        sqlx::query("INSERT INTO runner_tokens (token_hash, proof_id) VALUES (sha256(convert_to($1, 'UTF8')), $2)")
            .bind(&token)
            .bind(proof_id)
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// Lets `role` log in with `password` as a member of `proofjobs_runner` (created by the
    /// migrations): the database identity runner pods use. Creates the role, or, when it exists
    /// and `replace` is set, gives it the new password; `false` when it existed and was left as is.
    pub async fn set_runner_login(&self, role: &str, password: &str, replace: bool) -> Result<bool> {
        anyhow::ensure!(
            !role.is_empty() && role.len() <= 63 && role.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "role name {role:?}: use lowercase letters, digits and '_'"
        );
        anyhow::ensure!(password.len() >= 8, "the runner role's password must have at least 8 characters");
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)").bind(role).fetch_one(&self.pool).await?;
        if exists && !replace {
            return Ok(false);
        }
        // DDL takes no bind parameters: the server quotes the name and the password itself.
        let template = if exists {
            "SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)"
        } else {
            "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE proofjobs_runner', $1::text, $2::text)"
        };
        let statement: String = sqlx::query_scalar(template).bind(role).bind(password).fetch_one(&self.pool).await?;
        sqlx::raw_sql(&statement).execute(&self.pool).await.with_context(|| format!("setting up database role {role}"))?;
        if exists {
            let grant: String =
                sqlx::query_scalar("SELECT format('GRANT proofjobs_runner TO %I', $1::text)").bind(role).fetch_one(&self.pool).await?;
            sqlx::raw_sql(&grant).execute(&self.pool).await?;
        }
        Ok(true)
    }

    pub async fn register_runner(&self, id: &str, proof_id: &str, stages: &[Stage], backend: &str, handle: &str) -> Result<()> {
        sqlx::query("INSERT INTO runners (id, proof_id, stages, backend, handle) VALUES ($1,$2,$3,$4,$5) ON CONFLICT (id) DO NOTHING")
            .bind(id)
            .bind(proof_id)
            .bind(stages)
            .bind(backend)
            .bind(handle)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_runner_handle(&self, id: &str, handle: &str) -> Result<()> {
        sqlx::query("UPDATE runners SET handle = $2 WHERE id = $1").bind(id).bind(handle).execute(&self.pool).await?;
        Ok(())
    }

    /// "Still alive." Heartbeats wake nobody (the notify trigger skips them); the dispatcher
    /// reads them on its passes.
    pub async fn runner_heartbeat(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE runners SET heartbeat_at = now() WHERE id = $1 AND exited_at IS NULL").bind(id).execute(&self.pool).await?;
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

    /// The dispatcher has acted on a runner's end: the row leaves its view. Records the end too
    /// when the runner could not (crashed, killed, lost), and hands its unfinished tasks back.
    pub async fn runner_reaped(&self, id: &str, exit_code: Option<i32>, error: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE runners SET exited_at = COALESCE(exited_at, now()), exit_code = COALESCE(exit_code, $2),
                    error = COALESCE($3, error), reaped_at = now()
             WHERE id = $1 AND reaped_at IS NULL",
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

    pub async fn runner_error(&self, id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar::<_, Option<String>>("SELECT error FROM runners WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .flatten())
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

    pub async fn live_runners(&self, backend: &str) -> Result<Vec<RunnerRow>> {
        let sql = format!("SELECT {RUNNER_COLUMNS} FROM runners WHERE exited_at IS NULL AND backend = $1 ORDER BY started_at");
        Ok(sqlx::query_as(&sql).bind(backend).fetch_all(&self.pool).await?)
    }

    /// Runners of `backend` whose end the dispatcher has not acted on yet: live ones, and those
    /// that recorded their own exit since the last pass.
    pub async fn unreaped_runners(&self, backend: &str) -> Result<Vec<RunnerRow>> {
        let sql = format!("SELECT {RUNNER_COLUMNS} FROM runners WHERE reaped_at IS NULL AND backend = $1 ORDER BY started_at");
        Ok(sqlx::query_as(&sql).bind(backend).fetch_all(&self.pool).await?)
    }

    /// Which of `ids` have a runner row, live or ended: a runner that registered at some point.
    pub async fn known_runners(&self, ids: &[String]) -> Result<HashSet<String>> {
        let known: Vec<String> = sqlx::query_scalar("SELECT id FROM runners WHERE id = ANY($1)").bind(ids).fetch_all(&self.pool).await?;
        Ok(known.into_iter().collect())
    }

    /// Every runner's handle (pid, Job name), live or ended.
    pub async fn runner_handles(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT handle FROM runners").fetch_all(&self.pool).await?)
    }

    /// Retry state of every runner group of `proof_ids` that has one, with the number of runners
    /// `backend` started for it.
    pub async fn group_states(&self, proof_ids: &[String], backend: &str) -> Result<Vec<GroupState>> {
        Ok(sqlx::query_as(
            "SELECT COALESCE(g.proof_id, r.proof_id) AS proof_id, COALESCE(g.stages, r.stages) AS stages,
                    COALESCE(g.failures, 0) AS failures, COALESCE(g.retries, 0) AS retries, g.not_before,
                    COALESCE(r.launches, 0) AS launches
             FROM (SELECT * FROM runner_groups WHERE proof_id = ANY($1)) g
             FULL JOIN (SELECT proof_id, stages, count(*) AS launches FROM runners
                        WHERE proof_id = ANY($1) AND backend = $2 GROUP BY proof_id, stages) r
               ON g.proof_id = r.proof_id AND g.stages = r.stages",
        )
        .bind(proof_ids)
        .bind(backend)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Start no runner of the group before `until`, counting nothing (a launch that failed).
    pub async fn hold_group(&self, proof_id: &str, stages: &[Stage], until: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "INSERT INTO runner_groups (proof_id, stages, not_before) VALUES ($1, $2, $3)
             ON CONFLICT (proof_id, stages) DO UPDATE SET not_before = $3",
        )
        .bind(proof_id)
        .bind(stages)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A runner of the group ended without finishing its work: count it (`counted`: a failure,
    /// else a hand-back) and hold the next one back until `not_before`. Returns the new state.
    pub async fn record_group_retry(
        &self,
        proof_id: &str,
        stages: &[Stage],
        counted: bool,
        not_before: DateTime<Utc>,
    ) -> Result<GroupState> {
        Ok(sqlx::query_as(
            "INSERT INTO runner_groups AS g (proof_id, stages, failures, retries, not_before)
             VALUES ($1, $2, CASE WHEN $3 THEN 1 ELSE 0 END, CASE WHEN $3 THEN 0 ELSE 1 END, $4)
             ON CONFLICT (proof_id, stages) DO UPDATE SET
                failures = g.failures + CASE WHEN $3 THEN 1 ELSE 0 END,
                retries = g.retries + CASE WHEN $3 THEN 0 ELSE 1 END,
                not_before = $4
             RETURNING proof_id, stages, failures, retries, not_before, 0::bigint AS launches",
        )
        .bind(proof_id)
        .bind(stages)
        .bind(counted)
        .bind(not_before)
        .fetch_one(&self.pool)
        .await?)
    }
}
