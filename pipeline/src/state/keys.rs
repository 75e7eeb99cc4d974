//! The `api_keys` table: bearer keys bound to a requester. A key string is
//! `pj_<id>_<secret>`; the id is public (listing, revoking), the secret is shown once, and only
//! the SHA-256 of the whole string is kept.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::Db;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub requester: String,
    pub admin: bool,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Who an accepted key speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHolder {
    pub key_id: String,
    pub requester: String,
    pub admin: bool,
}

/// Why a presented key was refused; the api says which, so a holder knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefusal {
    Malformed,
    Unknown,
    Revoked,
    Expired,
}

impl KeyRefusal {
    pub fn message(&self) -> &'static str {
        match self {
            KeyRefusal::Malformed => "the API key is malformed (expected pj_<id>_<secret>)",
            KeyRefusal::Unknown => "the API key is not known to this cluster",
            KeyRefusal::Revoked => "the API key was revoked",
            KeyRefusal::Expired => "the API key has expired",
        }
    }
}

fn digest(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A fresh key: a 12-hex-digit id and 244 bits of secret (`ids::new_secret`).
fn new_key() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let secret = crate::ids::new_secret();
    let key = format!("pj_{id}_{secret}");
    (id, key)
}

/// The id part of a well-formed key.
fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("pj_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 12) && hex(secret, 64)).then_some(id)
}

impl Db {
    /// Creates a key for `requester`; returns its row and the key string (shown only now).
    pub async fn create_key(
        &self,
        requester: &str,
        admin: bool,
        expires_at: Option<DateTime<Utc>>,
        description: &str,
    ) -> Result<(KeyRow, String)> {
        super::validate_requester_name(requester).map_err(anyhow::Error::msg)?;
        let (id, key) = new_key();
        let row = sqlx::query_as(
            "INSERT INTO api_keys (id, requester, secret_hash, admin, description, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, requester, admin, description, created_at, expires_at, revoked_at",
        )
        .bind(&id)
        .bind(requester)
        .bind(digest(&key))
        .bind(admin)
        .bind(description)
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await
        .context("creating an API key")?;
        Ok((row, key))
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRow>> {
        Ok(sqlx::query_as(
            "SELECT id, requester, admin, description, created_at, expires_at, revoked_at FROM api_keys ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a key by id; false when there is no such key. Revoking twice keeps the first time.
    pub async fn revoke_key(&self, id: &str) -> Result<bool> {
        let found = sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(found > 0)
    }

    /// Who `key` speaks for, or why it is refused.
    pub async fn authenticate(&self, key: &str) -> Result<Result<KeyHolder, KeyRefusal>> {
        if key_id(key).is_none() {
            return Ok(Err(KeyRefusal::Malformed));
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT id, requester, admin, description, created_at, expires_at, revoked_at FROM api_keys WHERE secret_hash = $1",
        )
        .bind(digest(key))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => Err(KeyRefusal::Unknown),
            Some(row) if row.revoked_at.is_some() => Err(KeyRefusal::Revoked),
            Some(row) if row.expires_at.is_some_and(|t| t <= Utc::now()) => Err(KeyRefusal::Expired),
            Some(row) => Ok(KeyHolder { key_id: row.id, requester: row.requester, admin: row.admin }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_are_well_formed_and_distinct() {
        let (id, key) = new_key();
        assert_eq!(key_id(&key), Some(id.as_str()));
        assert_ne!(new_key().1, key);
        assert_eq!(digest(&key).len(), 32);
    }

    #[test]
    fn malformed_keys_are_recognised() {
        for bad in ["", "pj_", "Bearer x", "pj_0123456789ab_short", "pj_0123456789ab", "xx_0123456789ab_"] {
            assert_eq!(key_id(bad), None, "{bad:?}");
        }
        let good = format!("pj_0123456789ab_{}", "a".repeat(64));
        assert_eq!(key_id(&good), Some("0123456789ab"));
        assert_eq!(key_id(&good.replace("pj_0123", "pj_g123")), None);
    }
}
