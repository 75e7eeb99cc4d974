//! Redis-backed artifact store for cluster mode. Key layout is sp1-cluster's, so its clients can
//! upload inputs straight into our Redis and we can read them:
//!   * encoded value ≤ 32 MiB: plain string `<id>`;
//!   * larger: hash `<id>:chunks` with fields "0".."n-1" (32 MiB slices of the encoded value) and
//!     "__n" = n, written last so a value without "__n" is never taken as complete.
//!
//! Large writes wait while Redis is above a memory watermark (Redis runs `noeviction`: a write
//! past `maxmemory` fails, and it must never evict a live artifact).

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ::redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Client, ErrorKind, RedisError,
};
use anyhow::Result;
use backon::{BackoffBuilder, ExponentialBuilder};
use sp1_prover_types::{ArtifactClient, ArtifactId, ArtifactType};
use tokio::sync::OnceCell;

use super::{codec, ttl_for, StoreConfig, StoreError};

/// Largest string value; bigger encoded values are split in hash fields of this size.
pub const CHUNK_SIZE: usize = 32 << 20;
/// Encoded values larger than this wait for Redis memory below the watermark.
pub const BACKPRESSURE_THRESHOLD: usize = 1 << 20;
/// Hash field holding the number of chunks; written last.
pub const COUNT_FIELD: &str = "__n";
/// How long an `INFO memory` reading is reused.
const MEMORY_READING_TTL: Duration = Duration::from_millis(250);
/// Keys per DEL in `delete_batch`.
const DELETE_BATCH: usize = 512;

/// Key of the hash holding a chunked value.
pub fn chunks_key(id: &str) -> String {
    format!("{id}:chunks")
}

/// `used_memory` and `maxmemory` from `INFO memory` (0 = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReading {
    pub used: u64,
    pub max: u64,
}

impl MemoryReading {
    /// Whether writing `incoming` more bytes would cross `watermark * maxmemory`.
    pub fn over_watermark(&self, incoming: u64, watermark: f64) -> bool {
        self.max > 0 && (self.used as f64 + incoming as f64) > watermark * self.max as f64
    }

    /// Parses the text of `INFO memory`; `None` when `used_memory` is missing.
    pub fn parse(info: &str) -> Option<MemoryReading> {
        let field = |name: &str| info.lines().find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok());
        Some(MemoryReading { used: field("used_memory")?, max: field("maxmemory").unwrap_or(0) })
    }
}

/// Whether a Redis error means "the store is unreachable or refuses work for now".
pub fn is_transient_redis_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError | ErrorKind::TryAgain | ErrorKind::ClusterDown | ErrorKind::MasterDown | ErrorKind::ReadOnly
        )
        || matches!(e.code(), Some("OOM" | "LOADING" | "BUSY" | "MASTERDOWN" | "READONLY"))
}

fn map_redis(e: RedisError, what: impl fmt::Display) -> anyhow::Error {
    if is_transient_redis_error(&e) {
        StoreError::Unavailable(format!("{what}: {e}")).into()
    } else {
        StoreError::Other(format!("{what}: {e}")).into()
    }
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// `url` with the password (if any) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None => userinfo.to_string(),
            };
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// The S3 tier behind Redis: an encoded value over `threshold` bytes is written to S3 and Redis
/// keeps a pointer record (`POINTER` + the length) under the artifact's key, with the key's TTL.
#[derive(Debug, Clone)]
pub struct Spill {
    pub tier: super::s3::S3Tier,
    pub threshold: usize,
}

/// What a pointer record starts with; a stored value is otherwise a zstd frame (magic 28 b5 2f fd),
/// so the two cannot be confused.
pub const POINTER: &[u8] = b"proofjobs-s3:";

/// Redis artifact store. Cheap to clone (shared connection and memory reading).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Values whose encoded size is over the threshold go to S3 (see `Spill`).
    spill: Option<Spill>,
    /// Opened on first use, so a store can be built while Redis is down.
    conn: OnceCell<ConnectionManager>,
    config: StoreConfig,
    described: String,
    memory: Mutex<Option<(Instant, MemoryReading)>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisStore({})", self.inner.described)
    }
}

impl RedisStore {
    /// Validates `url` (`redis://` or `rediss://`); the connection itself is made lazily, on
    /// first use, with bounded connect (3 s) and response (60 s) timeouts, and re-made after a
    /// failure by the next call.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<RedisStore> {
        RedisStore::connect_with_spill(url, config, None).await
    }

    /// As [`RedisStore::connect`], with values over `spill.threshold` kept in S3.
    pub async fn connect_with_spill(url: &str, config: StoreConfig, spill: Option<Spill>) -> Result<RedisStore> {
        let described = redact_url(url);
        let client = Client::open(url).map_err(|e| StoreError::Other(format!("invalid Redis artifact store URL {described}: {e}")))?;
        Ok(RedisStore { inner: Arc::new(Inner { client, spill, conn: OnceCell::new(), config, described, memory: Mutex::new(None) }) })
    }

    /// The stored (encoded) bytes of an artifact in order: its inline value, its chunks, or the
    /// ranges of its S3 object (left in pieces: the decoder reads across them).
    pub(crate) async fn fetch_encoded(&self, id: &str) -> Result<Vec<Vec<u8>>> {
        let mut conn = self.conn().await?;
        let inline: Option<Vec<u8>> =
            ::redis::cmd("GET").arg(id).query_async(&mut conn).await.map_err(|e| map_redis(e, format_args!("reading artifact {id}")))?;
        match inline {
            Some(bytes) if bytes.starts_with(POINTER) => {
                let Some(spill) = &self.inner.spill else {
                    return Err(StoreError::Other(format!("artifact {id} is in S3, and this store has no S3 tier configured")).into());
                };
                let len: usize = std::str::from_utf8(&bytes[POINTER.len()..])
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt(format!("artifact {id}: bad S3 pointer record")))?;
                let pieces = spill.tier.get_pieces(id, len).await?;
                let stored: usize = pieces.iter().map(Vec::len).sum();
                if stored != len {
                    return Err(StoreError::Corrupt(format!("artifact {id}: {stored} bytes in S3, the pointer says {len}")).into());
                }
                Ok(pieces)
            }
            Some(bytes) => Ok(vec![bytes]),
            None => self.read_chunks(&mut conn, id).await,
        }
    }

    /// The URL without password, for logs.
    pub fn describe(&self) -> String {
        self.inner.described.clone()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The S3 tier behind this store, when it has one.
    pub fn spill(&self) -> Option<&Spill> {
        self.inner.spill.as_ref()
    }

    async fn conn(&self) -> Result<ConnectionManager> {
        let conn = self
            .inner
            .conn
            .get_or_try_init(|| async {
                // No connect retries inside redis-rs (its first retry alone waits 1 s): a
                // failed (re)connect surfaces at once as a transient error, and the next call
                // tries again.
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(3))
                    .set_response_timeout(Duration::from_secs(60))
                    .set_number_of_retries(0);
                ConnectionManager::new_with_config(self.inner.client.clone(), cfg).await
            })
            .await
            .map_err(|e| map_redis(e, format_args!("connecting to {}", self.inner.described)))?;
        Ok(conn.clone())
    }

    /// Round trip to Redis (health check).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        ::redis::cmd("PING").query_async::<()>(&mut conn).await.map_err(|e| map_redis(e, format_args!("PING {}", self.inner.described)))
    }

    /// Puts (or replaces) an expiry on artifact `id`, whichever layout it is stored in.
    pub async fn set_ttl(&self, id: &str, ttl: Duration) -> Result<()> {
        let mut conn = self.conn().await?;
        ::redis::pipe()
            .cmd("PEXPIRE")
            .arg(id)
            .arg(millis(ttl))
            .ignore()
            .cmd("PEXPIRE")
            .arg(chunks_key(id))
            .arg(millis(ttl))
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| map_redis(e, format_args!("setting TTL on artifact {id}")))
    }

    /// Current `INFO memory` reading, reused for 250 ms unless `fresh`. `None` when Redis does
    /// not let us read it (then no backpressure is applied).
    pub async fn memory_reading(&self, fresh: bool) -> Result<Option<MemoryReading>> {
        if !fresh {
            if let Some((at, r)) = *self.inner.memory.lock().unwrap() {
                if at.elapsed() < MEMORY_READING_TTL {
                    return Ok(Some(r));
                }
            }
        }
        let mut conn = self.conn().await?;
        let info = match ::redis::cmd("INFO").arg("memory").query_async::<String>(&mut conn).await {
            Ok(info) => info,
            Err(e) if is_transient_redis_error(&e) => return Err(map_redis(e, "reading Redis INFO memory")),
            Err(e) => {
                tracing::warn!("cannot read Redis INFO memory, no backpressure: {e}");
                return Ok(None);
            }
        };
        let reading = MemoryReading::parse(&info);
        if let Some(r) = reading {
            *self.inner.memory.lock().unwrap() = Some((Instant::now(), r));
        }
        Ok(reading)
    }

    /// Waits (exponential backoff, up to `backoff_max`) until `incoming` more bytes fit under
    /// the memory watermark; fails with `StoreError::Unavailable` if they never do.
    async fn wait_for_memory(&self, id: &str, incoming: usize) -> Result<()> {
        let cfg = &self.inner.config;
        let incoming = incoming as u64;
        let Some(mut reading) = self.memory_reading(false).await? else {
            return Ok(());
        };
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .with_total_delay(Some(cfg.backoff_max))
            .without_max_times()
            .build();
        let started = Instant::now();
        let mut last_try = false;
        loop {
            if !reading.over_watermark(incoming, cfg.memory_watermark) {
                // Count our write in the cached reading so concurrent writers within the cache
                // window see it.
                if let Some((_, r)) = self.inner.memory.lock().unwrap().as_mut() {
                    r.used = r.used.saturating_add(incoming);
                }
                return Ok(());
            }
            if last_try {
                return Err(StoreError::Unavailable(format!(
                    "Redis {} is above its memory watermark: used {} + incoming {} bytes > {} × \
                     maxmemory {} (artifact {id}, waited {:.1?})",
                    self.inner.described,
                    reading.used,
                    incoming,
                    cfg.memory_watermark,
                    reading.max,
                    started.elapsed()
                ))
                .into());
            }
            let wait = match backoff.next() {
                Some(d) => d,
                None => {
                    last_try = true;
                    cfg.backoff_max.saturating_sub(started.elapsed())
                }
            };
            tracing::debug!(artifact = id, used = reading.used, max = reading.max, "Redis above memory watermark, waiting {wait:?}");
            tokio::time::sleep(wait).await;
            let Some(r) = self.memory_reading(true).await? else {
                return Ok(());
            };
            reading = r;
        }
    }

    /// Reads a chunked value (`<id>:chunks`), all chunks in one HMGET; NotFound unless it is complete.
    async fn read_chunks(&self, conn: &mut ConnectionManager, id: &str) -> Result<Vec<Vec<u8>>> {
        let key = chunks_key(id);
        let n: Option<String> = ::redis::cmd("HGET")
            .arg(&key)
            .arg(COUNT_FIELD)
            .query_async(conn)
            .await
            .map_err(|e| map_redis(e, format_args!("reading artifact {id}")))?;
        let Some(n) = n else {
            return Err(StoreError::NotFound(id.to_string()).into());
        };
        let n: usize = n.trim().parse().map_err(|_| StoreError::Corrupt(format!("artifact {id}: bad chunk count {n:?} in {key}")))?;
        if n == 0 {
            return Err(StoreError::Corrupt(format!("artifact {id}: {key} says it has no chunks")).into());
        }
        let chunks: Vec<Option<Vec<u8>>> = ::redis::cmd("HMGET")
            .arg(&key)
            .arg((0..n).map(|i| i.to_string()).collect::<Vec<_>>())
            .query_async(conn)
            .await
            .map_err(|e| map_redis(e, format_args!("reading the {n} chunks of artifact {id}")))?;
        chunks.into_iter().map(|chunk| chunk.ok_or_else(|| StoreError::NotFound(id.to_string()).into())).collect()
    }
}

impl ArtifactClient for RedisStore {
    async fn upload_raw(&self, artifact: &impl ArtifactId, artifact_type: ArtifactType, data: Vec<u8>) -> Result<()> {
        let id = artifact.id();
        let ttl = ttl_for(artifact_type, &self.inner.config);
        let encoded = codec::encode_async(data).await?;
        if let Some(spill) = self.inner.spill.as_ref().filter(|s| encoded.len() > s.threshold) {
            let len = encoded.len();
            spill.tier.put(id, encoded, ttl.is_some()).await?;
            let mut pointer = POINTER.to_vec();
            pointer.extend_from_slice(len.to_string().as_bytes());
            let mut conn = self.conn().await?;
            let mut pipe = ::redis::pipe();
            let set = pipe.cmd("SET").arg(id).arg(pointer);
            if let Some(ttl) = ttl {
                set.arg("PX").arg(millis(ttl));
            }
            set.ignore();
            pipe.cmd("DEL").arg(chunks_key(id)).ignore();
            return pipe
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| map_redis(e, format_args!("writing the S3 pointer of artifact {id}")));
        }
        if encoded.len() > BACKPRESSURE_THRESHOLD {
            self.wait_for_memory(id, encoded.len()).await?;
        }
        let mut conn = self.conn().await?;
        let err = |e: RedisError| map_redis(e, format_args!("writing artifact {id}"));
        let key = chunks_key(id);
        if encoded.len() <= CHUNK_SIZE {
            let mut pipe = ::redis::pipe();
            let set = pipe.cmd("SET").arg(id).arg(&encoded[..]);
            if let Some(ttl) = ttl {
                set.arg("PX").arg(millis(ttl));
            }
            set.ignore();
            // A chunked value from an earlier write of this id must not survive.
            pipe.cmd("DEL").arg(&key).ignore();
            pipe.query_async::<()>(&mut conn).await.map_err(err)?;
            return Ok(());
        }
        // Drop earlier values of this id: an inline one would shadow the hash, old chunks would
        // mix with ours.
        ::redis::cmd("DEL").arg(id).arg(&key).query_async::<()>(&mut conn).await.map_err(err)?;
        let n = encoded.len().div_ceil(CHUNK_SIZE);
        // While the chunks go in, the hash carries an expiry so an interrupted upload does not
        // leak; the final one (or none) is set with "__n".
        let writing_ttl = ttl.unwrap_or(self.inner.config.intermediate_ttl);
        for (i, chunk) in encoded.chunks(CHUNK_SIZE).enumerate() {
            let mut pipe = ::redis::pipe();
            pipe.cmd("HSET").arg(&key).arg(i.to_string()).arg(chunk).ignore();
            if i == 0 {
                pipe.cmd("PEXPIRE").arg(&key).arg(millis(writing_ttl)).ignore();
            }
            pipe.query_async::<()>(&mut conn).await.map_err(err)?;
        }
        let mut pipe = ::redis::pipe();
        pipe.cmd("HSET").arg(&key).arg(COUNT_FIELD).arg(n.to_string()).ignore();
        match ttl {
            Some(ttl) => pipe.cmd("PEXPIRE").arg(&key).arg(millis(ttl)).ignore(),
            None => pipe.cmd("PERSIST").arg(&key).ignore(),
        };
        pipe.query_async::<()>(&mut conn).await.map_err(err)?;
        Ok(())
    }

    async fn download_raw(&self, artifact: &impl ArtifactId, _artifact_type: ArtifactType) -> Result<Vec<u8>> {
        let id = artifact.id();
        codec::decode_async(id, self.fetch_encoded(id).await?, None).await
    }

    async fn exists(&self, artifact: &impl ArtifactId, _artifact_type: ArtifactType) -> Result<bool> {
        let id = artifact.id();
        let mut conn = self.conn().await?;
        let (inline, chunked): (bool, bool) = ::redis::pipe()
            .cmd("EXISTS")
            .arg(id)
            .cmd("HEXISTS")
            .arg(chunks_key(id))
            .arg(COUNT_FIELD)
            .query_async(&mut conn)
            .await
            .map_err(|e| map_redis(e, format_args!("checking artifact {id}")))?;
        Ok(inline || chunked)
    }

    async fn delete(&self, artifact: &impl ArtifactId, _artifact_type: ArtifactType) -> Result<()> {
        let id = artifact.id();
        let mut conn = self.conn().await?;
        ::redis::cmd("DEL")
            .arg(id)
            .arg(chunks_key(id))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| map_redis(e, format_args!("deleting artifact {id}")))?;
        match &self.inner.spill {
            Some(spill) => spill.tier.delete(&[id.to_string()]).await,
            None => Ok(()),
        }
    }

    async fn delete_batch(&self, artifacts: &[impl ArtifactId], _artifact_type: ArtifactType) -> Result<()> {
        if artifacts.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        for batch in artifacts.chunks(DELETE_BATCH) {
            let mut cmd = ::redis::cmd("DEL");
            for a in batch {
                cmd.arg(a.id()).arg(chunks_key(a.id()));
            }
            cmd.query_async::<()>(&mut conn).await.map_err(|e| map_redis(e, format_args!("deleting {} artifacts", artifacts.len())))?;
        }
        if let Some(spill) = &self.inner.spill {
            let ids: Vec<String> = artifacts.iter().map(|a| a.id().to_string()).collect();
            spill.tier.delete(&ids).await?;
        }
        Ok(())
    }
}

/// Against a real Redis (`REDIS_URL`): the fast test tier skips `live` modules, the full suite
/// runs them with the services up.
#[cfg(test)]
mod live {
    use super::*;
    use crate::artifacts::{codec::tests::random_bytes, is_transient, ArtifactStore};
    use sp1_prover_types::Artifact;

    fn redis_url() -> String {
        std::env::var("REDIS_URL").expect(
            "REDIS_URL is not set: the Redis artifact store tests need a real Redis \
             (run `eval \"$(scripts/services.sh start)\"` first)",
        )
    }

    async fn store_with(config: StoreConfig) -> RedisStore {
        RedisStore::connect(&redis_url(), config).await.unwrap()
    }

    async fn store() -> RedisStore {
        store_with(StoreConfig::default()).await
    }

    fn new_id() -> String {
        format!("pjtest_artifact_{}", uuid::Uuid::new_v4().simple())
    }

    async fn raw(store: &RedisStore) -> ConnectionManager {
        store.conn().await.unwrap()
    }

    #[tokio::test]
    async fn values_over_the_spill_threshold_live_in_s3_behind_a_pointer() {
        let Ok(endpoint) = std::env::var("PROOFJOBS_S3_ENDPOINT") else {
            panic!("PROOFJOBS_S3_ENDPOINT is not set: run `eval \"$(scripts/services.sh start)\"` first")
        };
        let tier = crate::artifacts::s3::S3Tier::connect(crate::artifacts::s3::S3Config {
            endpoint: Some(endpoint),
            bucket: "proofjobs-live-tests".into(),
            region: None,
            prefix: "spill/".into(),
            part_size: crate::artifacts::s3::S3Config::MIN_PART,
            concurrency: 4,
            path_style: true,
        })
        .await
        .unwrap();
        tier.ensure_bucket().await.unwrap();
        let spill = Spill { tier: tier.clone(), threshold: 1 << 20 };
        let store = RedisStore::connect_with_spill(&redis_url(), StoreConfig::default(), Some(spill)).await.unwrap();
        let (big, small) = (new_id(), new_id());
        // Random bytes do not compress: the encoded value stays over the threshold.
        let data = random_bytes(40 << 20, 11);
        store.upload_raw(&Artifact(big.clone()), ArtifactType::UnspecifiedArtifactType, data.clone()).await.unwrap();
        store.upload_raw(&Artifact(small.clone()), ArtifactType::UnspecifiedArtifactType, vec![7; 1000]).await.unwrap();
        let mut conn = raw(&store).await;
        let pointer: Vec<u8> = ::redis::cmd("GET").arg(&big).query_async(&mut conn).await.unwrap();
        assert!(pointer.starts_with(POINTER) && pointer.len() < 64, "Redis holds a pointer, {} bytes", pointer.len());
        assert!(pttl(&mut conn, &big).await > 0, "the pointer carries the intermediate TTL");
        let back = store.download_raw(&Artifact(big.clone()), ArtifactType::UnspecifiedArtifactType).await.unwrap();
        assert!(back == data, "the spilled value came back different");
        assert!(tier.get(&small, 1 << 20).await.is_err(), "a small value stays in Redis only");
        store.delete(&Artifact(big.clone()), ArtifactType::UnspecifiedArtifactType).await.unwrap();
        assert!(crate::artifacts::is_not_found(&tier.get(&big, usize::MAX).await.unwrap_err()), "deleting removes the object");
    }

    async fn spilling_store(threshold: usize) -> (RedisStore, crate::artifacts::s3::S3Tier) {
        let endpoint = std::env::var("PROOFJOBS_S3_ENDPOINT")
            .unwrap_or_else(|_| panic!("PROOFJOBS_S3_ENDPOINT is not set: run `eval \"$(scripts/services.sh start)\"` first"));
        let tier = crate::artifacts::s3::S3Tier::connect(crate::artifacts::s3::S3Config {
            endpoint: Some(endpoint),
            bucket: "proofjobs-live-tests".into(),
            region: None,
            prefix: "spill/".into(),
            part_size: 16 << 20,
            concurrency: 8,
            path_style: true,
        })
        .await
        .unwrap();
        tier.ensure_bucket().await.unwrap();
        let store = RedisStore::connect_with_spill(&redis_url(), StoreConfig::default(), Some(Spill { tier: tier.clone(), threshold }))
            .await
            .unwrap();
        (store, tier)
    }

    /// Over Redis' 512 MiB value limit: only the spill path can hold it.
    #[tokio::test]
    async fn a_600_mib_value_round_trips_byte_exact_through_s3_and_damage_is_detected() {
        let (store, tier) = spilling_store(256 << 20).await;
        let id = new_id();
        let data = random_bytes(600 << 20, 5);
        let started = std::time::Instant::now();
        store.upload_raw(&Artifact(id.clone()), ArtifactType::UnspecifiedArtifactType, data.clone()).await.unwrap();
        let back = store.download_raw(&Artifact(id.clone()), ArtifactType::UnspecifiedArtifactType).await.unwrap();
        eprintln!("600 MiB through S3 and back in {:.1} s", started.elapsed().as_secs_f64());
        assert!(back == data, "600 MiB came back different");
        drop(back);
        // Damage one byte of the stored object: the frame's checksum catches it.
        let mut stored = tier.get(&id, usize::MAX).await.unwrap();
        let middle = stored.len() / 2;
        stored[middle] ^= 0x55;
        tier.put(&id, stored, true).await.unwrap();
        let damaged = store.download_raw(&Artifact(id.clone()), ArtifactType::UnspecifiedArtifactType).await.unwrap_err();
        assert!(damaged.chain().any(|e| matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Corrupt(_)))), "{damaged:#}");
        store.delete(&Artifact(id), ArtifactType::UnspecifiedArtifactType).await.unwrap();
    }

    async fn pttl(conn: &mut ConnectionManager, key: &str) -> i64 {
        ::redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
    }

    #[tokio::test]
    async fn redis_small_round_trip() {
        let s = store().await;
        let id = new_id();
        let data = bincode::serialize(&("hello", vec![1u64, 2, 3])).unwrap();
        s.upload_raw(&id, ArtifactType::UnspecifiedArtifactType, data.clone()).await.unwrap();
        assert_eq!(s.download_raw(&id, ArtifactType::UnspecifiedArtifactType).await.unwrap(), data);
        // Typed helpers of the trait work on top.
        s.upload(&id, vec![5u32; 1000]).await.unwrap();
        assert_eq!(s.download::<Vec<u32>>(&id).await.unwrap(), vec![5u32; 1000]);
        // Empty values too.
        s.upload_raw(&id, ArtifactType::Stdin, Vec::new()).await.unwrap();
        assert!(s.download_raw(&id, ArtifactType::Stdin).await.unwrap().is_empty());
        s.delete(&id, ArtifactType::Stdin).await.unwrap();
    }

    #[tokio::test]
    async fn redis_large_value_is_chunked() {
        let s = store().await;
        let id = new_id();
        let data = random_bytes(70 << 20, 21);
        s.upload_raw(&id, ArtifactType::UnspecifiedArtifactType, data.clone()).await.unwrap();
        let mut conn = raw(&s).await;
        let key = chunks_key(&id);
        let n: String = ::redis::cmd("HGET").arg(&key).arg("__n").query_async(&mut conn).await.unwrap();
        assert!(n.parse::<usize>().unwrap() >= 3, "__n = {n}");
        let inline: bool = ::redis::cmd("EXISTS").arg(&id).query_async(&mut conn).await.unwrap();
        assert!(!inline);
        assert!(pttl(&mut conn, &key).await > 0, "chunked intermediate has a TTL");
        assert!(s.exists(&id, ArtifactType::UnspecifiedArtifactType).await.unwrap());
        let back = s.download_raw(&id, ArtifactType::UnspecifiedArtifactType).await.unwrap();
        assert!(back == data, "70 MiB round trip differs");
        // Overwriting with a small value replaces the chunked one.
        s.upload_raw(&id, ArtifactType::UnspecifiedArtifactType, b"small".to_vec()).await.unwrap();
        let chunks: bool = ::redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
        assert!(!chunks);
        assert_eq!(s.download_raw(&id, ArtifactType::UnspecifiedArtifactType).await.unwrap(), b"small");
        s.delete(&id, ArtifactType::UnspecifiedArtifactType).await.unwrap();
    }

    #[tokio::test]
    async fn redis_program_chunked_has_no_ttl_and_partial_is_not_found() {
        let s = store().await;
        let id = new_id();
        let data = random_bytes(40 << 20, 22);
        s.upload_raw(&id, ArtifactType::Program, data.clone()).await.unwrap();
        let mut conn = raw(&s).await;
        let key = chunks_key(&id);
        assert_eq!(pttl(&mut conn, &key).await, -1);
        // Without "__n" the value is incomplete: not found, and not existing.
        ::redis::cmd("HDEL").arg(&key).arg("__n").query_async::<()>(&mut conn).await.unwrap();
        assert!(!s.exists(&id, ArtifactType::Program).await.unwrap());
        let e = s.download_raw(&id, ArtifactType::Program).await.unwrap_err();
        assert!(e.to_string().contains(&format!("artifact {id} not found")), "{e}");
        assert!(!is_transient(&e));
        // A missing chunk with "__n" present: not found either.
        ::redis::cmd("HSET").arg(&key).arg("__n").arg("3").query_async::<()>(&mut conn).await.unwrap();
        let e = s.download_raw(&id, ArtifactType::Program).await.unwrap_err();
        assert!(e.to_string().contains(&format!("artifact {id} not found")), "{e}");
        s.delete(&id, ArtifactType::Program).await.unwrap();
    }

    #[tokio::test]
    async fn redis_corruption_is_detected() {
        let s = store().await;
        let id = new_id();
        s.upload_raw(&id, ArtifactType::Proof, random_bytes(100_000, 23)).await.unwrap();
        let mut conn = raw(&s).await;
        ::redis::cmd("SETRANGE").arg(&id).arg(codec::HEADER_LEN + 50_000).arg(&b"garbage!"[..]).query_async::<()>(&mut conn).await.unwrap();
        let e = s.download_raw(&id, ArtifactType::Proof).await.unwrap_err().to_string();
        assert!(e.contains("checksum mismatch") && e.contains(&id), "{e}");
        // A value that is neither format.
        ::redis::cmd("SET").arg(&id).arg("plain text").query_async::<()>(&mut conn).await.unwrap();
        let e = s.download_raw(&id, ArtifactType::Proof).await.unwrap_err().to_string();
        assert!(e.contains("not an artifact value"), "{e}");
        s.delete(&id, ArtifactType::Proof).await.unwrap();
    }

    #[tokio::test]
    async fn redis_reads_sp1_cluster_values() {
        let s = store().await;
        let mut conn = raw(&s).await;
        // Inline: SET <id> zstd(bincode).
        let id = new_id();
        let small = bincode::serialize(&vec![42u64; 10_000]).unwrap();
        let z = zstd::encode_all(&small[..], 0).unwrap();
        ::redis::cmd("SET").arg(&id).arg(z).query_async::<()>(&mut conn).await.unwrap();
        assert!(s.exists(&id, ArtifactType::Stdin).await.unwrap());
        assert_eq!(s.download_raw(&id, ArtifactType::Stdin).await.unwrap(), small);
        assert_eq!(s.download_stdin::<Vec<u64>>(&id).await.unwrap(), vec![42u64; 10_000]);
        // Chunked: raw zstd split in 32 MiB hash fields + __n.
        let id2 = new_id();
        let big = random_bytes(70 << 20, 24);
        let z = zstd::encode_all(&big[..], 0).unwrap();
        let key = chunks_key(&id2);
        let n = z.len().div_ceil(CHUNK_SIZE);
        assert!(n >= 3);
        for (i, c) in z.chunks(CHUNK_SIZE).enumerate() {
            ::redis::cmd("HSET").arg(&key).arg(i.to_string()).arg(c).query_async::<()>(&mut conn).await.unwrap();
        }
        ::redis::cmd("HSET").arg(&key).arg("__n").arg(n.to_string()).query_async::<()>(&mut conn).await.unwrap();
        assert!(s.exists(&id2, ArtifactType::Program).await.unwrap());
        let back = s.download_raw(&id2, ArtifactType::Program).await.unwrap();
        assert!(back == big, "chunked sp1-cluster value differs");
        s.delete_batch(&[id, id2.clone()], ArtifactType::Stdin).await.unwrap();
        assert!(!s.exists(&id2, ArtifactType::Program).await.unwrap());
    }

    #[tokio::test]
    async fn redis_ttl_policy_and_set_ttl() {
        let s = store().await;
        let mut conn = raw(&s).await;
        let (inter, prog) = (new_id(), new_id());
        s.upload_raw(&inter, ArtifactType::UnspecifiedArtifactType, vec![1; 100]).await.unwrap();
        s.upload_raw(&prog, ArtifactType::Program, vec![2; 100]).await.unwrap();
        let t = pttl(&mut conn, &inter).await;
        assert!(t > 0 && t <= 6 * 3600 * 1000, "intermediate PTTL {t}");
        assert_eq!(pttl(&mut conn, &prog).await, -1);
        // Rewriting an intermediate id as a program drops the old expiry.
        s.upload_raw(&inter, ArtifactType::Program, vec![3; 100]).await.unwrap();
        assert_eq!(pttl(&mut conn, &inter).await, -1);
        // The owner expires the program once the proof is over.
        s.set_ttl(&prog, Duration::from_secs(60)).await.unwrap();
        let t = pttl(&mut conn, &prog).await;
        assert!(t > 0 && t <= 60_000, "program PTTL after set_ttl {t}");
        // Through the enum too.
        let store = ArtifactStore::Redis(s.clone());
        store.set_ttl(&inter, Duration::from_secs(30)).await.unwrap();
        assert!(pttl(&mut conn, &inter).await > 0);
        s.delete_batch(&[inter, prog], ArtifactType::Program).await.unwrap();
    }

    #[tokio::test]
    async fn redis_exists_delete_batch() {
        let store = ArtifactStore::connect(&redis_url(), StoreConfig::default()).await.unwrap();
        let ids: Vec<String> = (0..5).map(|_| new_id()).collect();
        for id in &ids {
            assert!(!store.exists(id, ArtifactType::UnspecifiedArtifactType).await.unwrap());
            store.upload_raw(id, ArtifactType::UnspecifiedArtifactType, id.as_bytes().to_vec()).await.unwrap();
            assert!(store.exists(id, ArtifactType::UnspecifiedArtifactType).await.unwrap());
        }
        store.delete(&ids[0], ArtifactType::UnspecifiedArtifactType).await.unwrap();
        assert!(!store.exists(&ids[0], ArtifactType::UnspecifiedArtifactType).await.unwrap());
        store.delete(&ids[0], ArtifactType::UnspecifiedArtifactType).await.unwrap();
        assert_eq!(store.download_raw(&ids[1], ArtifactType::UnspecifiedArtifactType).await.unwrap(), ids[1].as_bytes());
        store.delete_batch(&ids[1..], ArtifactType::UnspecifiedArtifactType).await.unwrap();
        for id in &ids {
            assert!(!store.exists(id, ArtifactType::UnspecifiedArtifactType).await.unwrap());
            let e = store.download_raw(id, ArtifactType::UnspecifiedArtifactType).await.unwrap_err();
            assert!(crate::artifacts::is_not_found(&e), "{e}");
        }
        store.delete_batch(&Vec::<String>::new(), ArtifactType::UnspecifiedArtifactType).await.unwrap();
    }

    #[tokio::test]
    async fn redis_dead_port_is_transient_and_fast() {
        let started = Instant::now();
        let store = ArtifactStore::connect("redis://127.0.0.1:1", StoreConfig::default()).await.unwrap();
        let id = new_id();
        let e = store.upload_raw(&id, ArtifactType::Stdin, vec![1, 2, 3]).await.unwrap_err();
        assert!(is_transient(&e), "{e:#}");
        let e = store.download_raw(&id, ArtifactType::Stdin).await.unwrap_err();
        assert!(is_transient(&e), "{e:#}");
        let e = store.exists(&id, ArtifactType::Stdin).await.unwrap_err();
        assert!(is_transient(&e), "{e:#}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn redis_memory_watermark_backpressure() {
        let s = store_with(StoreConfig { memory_watermark: 1e-9, backoff_max: Duration::from_millis(700), ..StoreConfig::default() }).await;
        let r = s.memory_reading(true).await.unwrap().expect("INFO memory readable");
        assert!(r.used > 0);
        if r.max == 0 {
            panic!("test Redis has no maxmemory; scripts/services.sh sets one");
        }
        let id = new_id();
        // Small values skip the check.
        s.upload_raw(&id, ArtifactType::Stdin, vec![9; 1000]).await.unwrap();
        let started = Instant::now();
        let e = s.upload_raw(&id, ArtifactType::Stdin, random_bytes(2 << 20, 25)).await.unwrap_err();
        let waited = started.elapsed();
        assert!(e.to_string().contains("above its memory watermark"), "{e}");
        assert!(is_transient(&e));
        assert!(waited >= Duration::from_millis(600) && waited < Duration::from_secs(3), "{waited:?}");
        s.delete(&id, ArtifactType::Stdin).await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reading_parse_and_watermark() {
        let info = "# Memory\r\nused_memory:1000\r\nused_memory_human:1K\r\nmaxmemory:10000\r\nmaxmemory_human:9K\r\n";
        let r = MemoryReading::parse(info).unwrap();
        assert_eq!(r, MemoryReading { used: 1000, max: 10000 });
        assert!(!r.over_watermark(7000, 0.8));
        assert!(r.over_watermark(7001, 0.8));
        assert!(!MemoryReading { used: 1 << 40, max: 0 }.over_watermark(1 << 40, 0.8));
    }

    #[test]
    fn redacts_password() {
        assert_eq!(redact_url("redis://:secret@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("rediss://user:p%40ss@h/1"), "rediss://user:***@h/1");
        assert_eq!(redact_url("redis://127.0.0.1:56379"), "redis://127.0.0.1:56379");
        assert_eq!(redact_url("redis://user@h"), "redis://user@h");
    }
}
