//! The prover-network API's rows (api/src/network/): per-address nonces, programs registered per
//! requester and vk hash, one-shot upload grants, the network request id of each proof, and the allowlist of
//! addresses. Signed requests advance a nonce only when it is the one expected, in one statement,
//! so two racing requests of one address never both pass.

use anyhow::Result;
use chrono::{DateTime, Utc};

use super::Db;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NetworkProgram {
    pub vk_hash: Vec<u8>,
    pub vk: Vec<u8>,
    pub program_artifact: String,
    pub owner: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NetworkUpload {
    pub token: String,
    pub artifact: String,
    pub kind: i32,
    pub owner: String,
    pub expires_at: DateTime<Utc>,
    pub uploaded_at: Option<DateTime<Utc>>,
    pub sha256: Option<Vec<u8>>,
}

/// What taking an upload grant for a body found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadTake {
    /// The grant is this body's now: store it.
    Taken,
    /// The same body was taken before (a repeated PUT): nothing to do.
    Repeat,
    /// Already used for another body, expired, or unknown.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NetworkRequest {
    pub request_id: Vec<u8>,
    pub proof_id: String,
    pub owner: String,
    pub download_token: String,
}

const UPLOAD_COLUMNS: &str = "token, artifact, kind, owner, expires_at, uploaded_at, sha256";
const REQUEST_COLUMNS: &str = "request_id, proof_id, owner, download_token";

impl Db {
    /// The nonce `address`'s next signed request must carry.
    pub async fn network_nonce(&self, address: &[u8]) -> Result<u64> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT next_nonce FROM network_nonces WHERE address = $1").bind(address).fetch_optional(&self.pool).await?;
        Ok(next.unwrap_or(0) as u64)
    }

    /// Take `nonce` for `address` if it is the expected one: false when another request took it.
    pub async fn use_network_nonce(&self, address: &[u8], nonce: u64) -> Result<bool> {
        let Ok(nonce) = i64::try_from(nonce) else { return Ok(false) };
        sqlx::query("INSERT INTO network_nonces (address) VALUES ($1) ON CONFLICT (address) DO NOTHING")
            .bind(address)
            .execute(&self.pool)
            .await?;
        let taken = sqlx::query("UPDATE network_nonces SET next_nonce = next_nonce + 1 WHERE address = $1 AND next_nonce = $2")
            .bind(address)
            .bind(nonce)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(taken == 1)
    }

    /// `owner`'s registration of the program with `vk_hash`.
    pub async fn network_program(&self, vk_hash: &[u8], owner: &str) -> Result<Option<NetworkProgram>> {
        Ok(sqlx::query_as(
            "SELECT vk_hash, vk, program_artifact, owner, created_at FROM network_programs WHERE vk_hash = $1 AND owner = $2",
        )
        .bind(vk_hash)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Register a program for `owner`; a later registration of the same vk hash replaces it.
    pub async fn insert_network_program(&self, vk_hash: &[u8], vk: &[u8], program_artifact: &str, owner: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO network_programs (vk_hash, vk, program_artifact, owner) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (vk_hash, owner) DO UPDATE SET vk = $2, program_artifact = $3, created_at = now()",
        )
        .bind(vk_hash)
        .bind(vk)
        .bind(program_artifact)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn insert_network_upload(&self, upload: &NetworkUpload) -> Result<()> {
        sqlx::query("INSERT INTO network_uploads (token, artifact, kind, owner, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&upload.token)
            .bind(&upload.artifact)
            .bind(upload.kind)
            .bind(&upload.owner)
            .bind(upload.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn network_upload(&self, token: &str) -> Result<Option<NetworkUpload>> {
        Ok(sqlx::query_as(&format!("SELECT {UPLOAD_COLUMNS} FROM network_uploads WHERE token = $1"))
            .bind(token)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The upload grant behind an artifact id (what `program_uri`/`stdin_uri` name).
    pub async fn network_upload_of(&self, artifact: &str) -> Result<Option<NetworkUpload>> {
        Ok(sqlx::query_as(&format!("SELECT {UPLOAD_COLUMNS} FROM network_uploads WHERE artifact = $1"))
            .bind(artifact)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Take an unexpired, unused grant for the body hashing to `sha256`, in one statement, so
    /// two PUTs never both write; a repeat of the body that took it is told so.
    pub async fn take_network_upload(&self, token: &str, sha256: &[u8]) -> Result<UploadTake> {
        let taken = sqlx::query(
            "UPDATE network_uploads SET uploaded_at = now(), sha256 = $2 WHERE token = $1 AND uploaded_at IS NULL AND expires_at > now()",
        )
        .bind(token)
        .bind(sha256)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if taken == 1 {
            return Ok(UploadTake::Taken);
        }
        let earlier: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT sha256 FROM network_uploads WHERE token = $1").bind(token).fetch_optional(&self.pool).await?;
        Ok(if earlier.flatten().as_deref() == Some(sha256) { UploadTake::Repeat } else { UploadTake::Refused })
    }

    /// Give a taken grant back (storing its body failed), so the client's retry can use it.
    pub async fn release_network_upload(&self, token: &str) -> Result<()> {
        sqlx::query("UPDATE network_uploads SET uploaded_at = NULL, sha256 = NULL WHERE token = $1")
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record a request; an existing row for the same id (a retry) is returned instead.
    pub async fn insert_network_request(&self, request: &NetworkRequest) -> Result<NetworkRequest> {
        sqlx::query(
            "INSERT INTO network_requests (request_id, proof_id, owner, download_token) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&request.request_id)
        .bind(&request.proof_id)
        .bind(&request.owner)
        .bind(&request.download_token)
        .execute(&self.pool)
        .await?;
        Ok(self.network_request(&request.request_id).await?.expect("a row just inserted or found"))
    }

    pub async fn network_request(&self, request_id: &[u8]) -> Result<Option<NetworkRequest>> {
        Ok(sqlx::query_as(&format!("SELECT {REQUEST_COLUMNS} FROM network_requests WHERE request_id = $1"))
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn network_request_by_token(&self, token: &str) -> Result<Option<NetworkRequest>> {
        Ok(sqlx::query_as(&format!("SELECT {REQUEST_COLUMNS} FROM network_requests WHERE download_token = $1"))
            .bind(token)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The requester an allowed address speaks for (allowlist mode).
    pub async fn network_address_requester(&self, address: &[u8]) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT requester FROM network_addresses WHERE address = $1")
            .bind(address)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Allow `address` to act as `requester` (replacing an earlier mapping).
    pub async fn allow_network_address(&self, address: &[u8], requester: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO network_addresses (address, requester) VALUES ($1, $2) ON CONFLICT (address) DO UPDATE SET requester = $2",
        )
        .bind(address)
        .bind(requester)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
