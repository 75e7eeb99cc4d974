//! Durable state in PostgreSQL, one file per table: proofs, tasks, runners (with their groups'
//! retry state), task messages, API keys, requesters' quotas, artifact claims, usage and prices,
//! quotes, the sweep of ended proofs, and the notifications every write fires. This module is the
//! only place that writes SQL, so the invariants live here: a terminal proof never changes again, a
//! succeeded task stays succeeded, a task is claimed by exactly one runner (`FOR UPDATE SKIP
//! LOCKED`) and only that claim may finish it, and a lost runner's tasks go back to the queue. Rows
//! map to structs with `sqlx::FromRow`; status columns are TEXT that decode into enums, and a
//! string no enum knows is an error, never a default.

mod claims;
mod keys;
mod lifecycle;
mod messages;
mod network;
mod notifications;
mod proofs;
mod quotes;
mod requesters;
mod runners;
mod tasks;
mod usage;

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};

pub use self::{
    keys::{KeyHolder, KeyRefusal, KeyRow},
    lifecycle::EndedProof,
    network::{NetworkProgram, NetworkRequest, NetworkUpload, UploadTake},
    notifications::{wait_for, Notifications},
    proofs::{ActiveHead, CancelOutcome, InsertOutcome, NewProof, ProofRow, ProofStatus, StageProgress},
    quotes::{HistoryPoint, QuoteRow},
    requesters::{validate_requester_name, Priority, Quota, Quotas, RequesterRow, DEFAULTS as DEFAULT_QUOTA},
    runners::{GroupState, RunnerRow},
    tasks::{Claim, ClaimedTask, NewTask, TaskState},
    usage::{Prices, RequesterUsage, Usage},
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The session setting a runner's token travels in (read by `proofjobs_runner_proof()`).
const RUNNER_TOKEN_SETTING: &str = "proofjobs.runner_token";

/// How often a task may be started before its failure fails the proof.
pub const MAX_TASK_ATTEMPTS: i32 = 3;

#[derive(Clone)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db> {
        Db::connect_runner(url, max_connections, None).await
    }

    /// Connects presenting a runner token (see `runners.rs`): a role that is a member of
    /// `proofjobs_runner` then has rights on the token's proof only.
    pub async fn connect_runner(url: &str, max_connections: u32, runner_token: Option<&str>) -> Result<Db> {
        let mut options: PgConnectOptions = url.parse().with_context(|| format!("{} is not a PostgreSQL URL", redact(url)))?;
        if let Some(token) = runner_token {
            options = options.options([(RUNNER_TOKEN_SETTING, token)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(options)
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

    /// A round trip to the database (health checks).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool: waits for connections in use to come back, then closes them all.
    pub async fn close(&self) {
        self.pool.close().await;
    }
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

/// Maps an enum stored as TEXT: encodes its `as_str()`, decodes through `FromStr` (an unknown
/// string is a decode error naming it), and works inside TEXT[] columns too.
macro_rules! text_column {
    ($ty:ty) => {
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }
        impl sqlx::postgres::PgHasArrayType for $ty {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }
        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $ty {
            fn encode_by_ref(&self, buf: &mut sqlx::postgres::PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }
        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                s.parse::<$ty>().map_err(|e| format!("{e}").into())
            }
        }
    };
}

text_column!(crate::stage::Stage);
text_column!(crate::stage::Mode);
text_column!(ProofStatus);
text_column!(TaskState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
