//! Artifact store shared by every proofjobs service: one `ArtifactClient` (the trait the SP1
//! prover uses to move programs, stdins, shards and proofs around) backed either by Redis
//! (cluster mode, layout-compatible with sp1-cluster clients) or by a local directory
//! (embedded mode), chosen at runtime from a URL.

pub mod codec;
pub mod fs;
pub mod redis;
pub mod s3;

use std::{fmt, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use sp1_prover_types::{ArtifactClient, ArtifactId, ArtifactType};

pub use self::{fs::FsStore, redis::RedisStore};

/// Tuning knobs of the store. Only the Redis backend uses them.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Expiry put on intermediate artifacts (shards, records, unspecified...). Programs, stdins
    /// and proofs get none; their owner calls `set_ttl` once the proof is over.
    pub intermediate_ttl: Duration,
    /// Fraction of Redis `maxmemory` above which writes of large values wait.
    pub memory_watermark: f64,
    /// How long a large write waits for memory below the watermark before failing.
    pub backoff_max: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { intermediate_ttl: Duration::from_secs(6 * 3600), memory_watermark: 0.8, backoff_max: Duration::from_secs(120) }
    }
}

/// Typed cause carried (inside `anyhow::Error`) by every failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or refuses writes for now: retrying later may succeed.
    #[error("artifact store unavailable: {0}")]
    Unavailable(String),
    /// The artifact (the id) does not exist, or only part of it does.
    #[error("artifact {0} not found")]
    NotFound(String),
    /// The stored bytes are damaged or are not an artifact value.
    #[error("corrupt artifact: {0}")]
    Corrupt(String),
    /// The artifact decodes to more bytes than the reader allows (a decompression bomb, or
    /// just more than a limit).
    #[error("artifact too large: {0}")]
    TooLarge(String),
    /// Anything else (bad id, local I/O error, ...).
    #[error("artifact store error: {0}")]
    Other(String),
}

/// True when `err` is a transient store failure (backend unreachable, connection refused or
/// dropped, timeout, Redis loading/failing over/out of memory, memory watermark): the caller
/// may retry the operation later. False for missing or corrupt artifacts and other errors.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        if let Some(se) = e.downcast_ref::<StoreError>() {
            return matches!(se, StoreError::Unavailable(_));
        }
        if let Some(re) = e.downcast_ref::<::redis::RedisError>() {
            return redis::is_transient_redis_error(re);
        }
        false
    })
}

/// True when `err` says the artifact decodes to more than the reader's limit.
pub fn is_too_large(err: &anyhow::Error) -> bool {
    err.chain().any(|e| matches!(e.downcast_ref::<StoreError>(), Some(StoreError::TooLarge(_))))
}

/// True when `err` says the artifact does not exist.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    missing_artifact(err).is_some()
}

/// The id of the artifact `err` found missing, if that is what it says.
pub fn missing_artifact(err: &anyhow::Error) -> Option<&str> {
    err.chain().find_map(|e| match e.downcast_ref::<StoreError>() {
        Some(StoreError::NotFound(id)) => Some(id.as_str()),
        _ => None,
    })
}

/// TTL policy: inputs and outputs of a proof live until their owner expires them; everything
/// else is an intermediate and expires on its own.
pub(crate) fn ttl_for(artifact_type: ArtifactType, config: &StoreConfig) -> Option<Duration> {
    match artifact_type {
        ArtifactType::Program | ArtifactType::Stdin | ArtifactType::PrivateStdin | ArtifactType::Proof => None,
        _ => Some(config.intermediate_ttl),
    }
}

/// Splits the S3 tier's settings off a Redis store URL, so that the one `artifact-store` value
/// every process reads also names the tier: `redis://host:6379/?spill=s3://bucket/prefix/`
/// `&spill_endpoint=http://127.0.0.1:59014&spill_threshold=268435456&spill_path_style=true`.
/// Returns the URL for Redis (without those parameters) and the tier's settings with the
/// threshold in bytes (default 256 MiB). `spill_region=` names the bucket's region (else the
/// AWS chain's); credentials come from the AWS chain.
pub fn split_spill(url: &str) -> Result<(String, Option<(s3::S3Config, usize)>)> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_string(), None)) };
    let (mut kept, mut target, mut endpoint, mut region, mut threshold, mut path_style) =
        (Vec::new(), None, None, None, 256usize << 20, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "spill" => target = Some(value.to_string()),
            "spill_endpoint" => endpoint = Some(value.to_string()),
            "spill_region" => region = Some(value.to_string()),
            "spill_threshold" => threshold = value.parse().with_context(|| format!("spill_threshold={value:?} is not a byte count"))?,
            "spill_path_style" => path_style = value == "true",
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    let Some(target) = target else {
        anyhow::ensure!(
            endpoint.is_none() && region.is_none(),
            "spill_endpoint or spill_region without spill=s3://bucket/prefix in the artifact store URL"
        );
        return Ok((url, None));
    };
    let rest = target.strip_prefix("s3://").with_context(|| format!("spill={target:?}: expected s3://bucket/prefix"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(!bucket.is_empty(), "spill={target:?} names no bucket");
    let config = s3::S3Config {
        endpoint,
        bucket: bucket.to_string(),
        region,
        prefix: prefix.to_string(),
        part_size: 16 << 20,
        concurrency: 8,
        path_style,
    };
    Ok((url, Some((config, threshold))))
}

/// The artifact store: Redis in cluster mode, a directory in embedded mode.
#[derive(Clone)]
pub enum ArtifactStore {
    Redis(RedisStore),
    Fs(FsStore),
}

impl fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactStore({})", self.describe())
    }
}

impl ArtifactStore {
    /// Opens the store named by `url`: `redis://…` / `rediss://…` (the connection is made
    /// lazily, on first use, so this does not fail when Redis is down), or `file:///abs/path`
    /// (the directory is created).
    pub async fn connect(url: &str, config: StoreConfig) -> Result<ArtifactStore> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            let (url, spill) = split_spill(url)?;
            let spill = match spill {
                Some((s3, threshold)) => Some(redis::Spill { tier: s3::S3Tier::connect(s3).await?, threshold }),
                None => None,
            };
            Ok(ArtifactStore::Redis(RedisStore::connect_with_spill(&url, config, spill).await?))
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!("artifact store URL {url:?} must be file:///absolute/path");
            }
            let store = FsStore::new(PathBuf::from(path)).await.with_context(|| format!("opening artifact directory {path}"))?;
            Ok(ArtifactStore::Fs(store))
        } else {
            bail!("unsupported artifact store URL {url:?}: expected redis://, rediss:// or file:///")
        }
    }

    /// The store's URL without any password, for logs.
    pub fn describe(&self) -> String {
        match self {
            ArtifactStore::Redis(s) => s.describe(),
            ArtifactStore::Fs(s) => s.describe(),
        }
    }

    /// The S3 tier of a Redis store with one (`spill=` in its URL).
    pub fn s3_tier(&self) -> Option<&s3::S3Tier> {
        match self {
            ArtifactStore::Redis(s) => s.spill().map(|spill| &spill.tier),
            ArtifactStore::Fs(_) => None,
        }
    }

    /// Whether the store answers: a Redis PING, or the directory still being there.
    pub async fn ping(&self) -> Result<()> {
        match self {
            ArtifactStore::Redis(s) => s.ping().await,
            ArtifactStore::Fs(s) => s.ping().await,
        }
    }

    /// An artifact's bytes, refusing (with [`StoreError::TooLarge`]) to decode more than `limit`
    /// of them: for readers of untrusted values, such as the api checking what a client stored.
    pub async fn download_limited(&self, id: &str, limit: usize) -> Result<Vec<u8>> {
        let encoded = match self {
            ArtifactStore::Redis(s) => s.fetch_encoded(id).await?,
            ArtifactStore::Fs(s) => vec![s.fetch_encoded(id).await?],
        };
        codec::decode_async(id, encoded, Some(limit)).await
    }

    /// Puts (or replaces) an expiry on an artifact, e.g. on a program or stdin once its proof
    /// has ended. No-op for the filesystem store.
    pub async fn set_ttl(&self, id: &str, ttl: Duration) -> Result<()> {
        match self {
            ArtifactStore::Redis(s) => s.set_ttl(id, ttl).await,
            ArtifactStore::Fs(s) => s.set_ttl(id, ttl).await,
        }
    }

    /// Deletes artifacts by id, whatever their type and layout (for callers that hold ids, not
    /// SP1 artifacts: the sweep after a proof ends).
    pub async fn delete_ids(&self, ids: &[String]) -> Result<()> {
        let artifacts: Vec<sp1_prover_types::Artifact> = ids.iter().cloned().map(sp1_prover_types::Artifact).collect();
        self.delete_batch(&artifacts, ArtifactType::UnspecifiedArtifactType).await
    }
}

impl ArtifactClient for ArtifactStore {
    async fn upload_raw(&self, artifact: &impl ArtifactId, artifact_type: ArtifactType, data: Vec<u8>) -> Result<()> {
        match self {
            ArtifactStore::Redis(s) => s.upload_raw(artifact, artifact_type, data).await,
            ArtifactStore::Fs(s) => s.upload_raw(artifact, artifact_type, data).await,
        }
    }

    async fn download_raw(&self, artifact: &impl ArtifactId, artifact_type: ArtifactType) -> Result<Vec<u8>> {
        match self {
            ArtifactStore::Redis(s) => s.download_raw(artifact, artifact_type).await,
            ArtifactStore::Fs(s) => s.download_raw(artifact, artifact_type).await,
        }
    }

    async fn exists(&self, artifact: &impl ArtifactId, artifact_type: ArtifactType) -> Result<bool> {
        match self {
            ArtifactStore::Redis(s) => s.exists(artifact, artifact_type).await,
            ArtifactStore::Fs(s) => s.exists(artifact, artifact_type).await,
        }
    }

    async fn delete(&self, artifact: &impl ArtifactId, artifact_type: ArtifactType) -> Result<()> {
        match self {
            ArtifactStore::Redis(s) => s.delete(artifact, artifact_type).await,
            ArtifactStore::Fs(s) => s.delete(artifact, artifact_type).await,
        }
    }

    async fn delete_batch(&self, artifacts: &[impl ArtifactId], artifact_type: ArtifactType) -> Result<()> {
        match self {
            ArtifactStore::Redis(s) => s.delete_batch(artifacts, artifact_type).await,
            ArtifactStore::Fs(s) => s.delete_batch(artifacts, artifact_type).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s3_tier_is_named_in_the_redis_url_and_taken_off_it() {
        let (url, spill) = split_spill(
            "redis://:pw@r:6379/0?spill=s3://bucket/artifacts/&spill_endpoint=http://127.0.0.1:59014&spill_threshold=1048576&spill_path_style=true&protocol=resp3",
        )
        .unwrap();
        assert_eq!(url, "redis://:pw@r:6379/0?protocol=resp3");
        let (s3, threshold) = spill.unwrap();
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str(), threshold, s3.path_style), ("bucket", "artifacts/", 1 << 20, true));
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:59014"));
        assert_eq!(split_spill("redis://r:6379").unwrap(), ("redis://r:6379".to_string(), None));
        let (s3, threshold) = split_spill("redis://r:6379/?spill=s3://b&spill_region=eu-west-1").unwrap().1.unwrap();
        assert_eq!(threshold, 256 << 20, "default threshold");
        assert_eq!((s3.region.as_deref(), s3.endpoint, s3.prefix.as_str()), (Some("eu-west-1"), None, ""));
        for bad in [
            "redis://r/?spill=b",
            "redis://r/?spill=s3://",
            "redis://r/?spill_endpoint=http://x",
            "redis://r/?spill_region=eu-west-1",
            "redis://r/?spill=s3://b&spill_threshold=big",
        ] {
            assert!(split_spill(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn connect_file_url_creates_dir_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("pj-artifacts-{}", uuid::Uuid::new_v4())).join("nested");
        let url = format!("file://{}", dir.display());
        let store = ArtifactStore::connect(&url, StoreConfig::default()).await.unwrap();
        assert!(dir.is_dir());
        assert_eq!(store.describe(), url);
        let id = "artifact_mod_test".to_string();
        store.upload_raw(&id, ArtifactType::Stdin, b"hello".to_vec()).await.unwrap();
        assert_eq!(store.download_raw(&id, ArtifactType::Stdin).await.unwrap(), b"hello");
        store.set_ttl(&id, Duration::from_secs(1)).await.unwrap();
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[tokio::test]
    async fn connect_rejects_bad_urls() {
        for url in ["http://x", "file://relative/path", "s3://bucket"] {
            assert!(ArtifactStore::connect(url, StoreConfig::default()).await.is_err(), "{url}");
        }
    }

    #[test]
    fn defaults_and_ttl_policy() {
        let c = StoreConfig::default();
        assert_eq!(c.intermediate_ttl, Duration::from_secs(21600));
        assert_eq!(c.memory_watermark, 0.8);
        assert_eq!(c.backoff_max, Duration::from_secs(120));
        for t in [ArtifactType::Program, ArtifactType::Stdin, ArtifactType::PrivateStdin, ArtifactType::Proof] {
            assert_eq!(ttl_for(t, &c), None);
        }
        for t in [ArtifactType::UnspecifiedArtifactType, ArtifactType::Groth16Circuit, ArtifactType::PlonkCircuit] {
            assert_eq!(ttl_for(t, &c), Some(c.intermediate_ttl));
        }
    }

    #[test]
    fn transient_classification() {
        let e = anyhow::Error::new(StoreError::Unavailable("down".into())).context("uploading x");
        assert!(is_transient(&e));
        assert!(!is_transient(&anyhow::Error::new(StoreError::NotFound("x".into()))));
        assert!(!is_transient(&anyhow::Error::new(StoreError::Corrupt("x".into()))));
        assert!(is_not_found(&anyhow::Error::new(StoreError::NotFound("x".into()))));
        let wrapped = anyhow::Error::new(StoreError::NotFound("shard-7".into())).context("proving a shard");
        assert_eq!(missing_artifact(&wrapped), Some("shard-7"));
        assert_eq!(missing_artifact(&anyhow::anyhow!("artifact shard-7 not found")), None);
        let io = ::redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_transient(&anyhow::Error::new(io)));
    }
}
