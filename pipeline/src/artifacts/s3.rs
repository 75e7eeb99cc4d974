//! The S3 tier of the artifact store: values too large to keep in Redis (its 512 MiB value limit,
//! and the memory a 280-billion-cycle proof's shards would take) live as objects in a bucket of
//! any S3-compatible endpoint, written with parallel multipart uploads and read back with parallel
//! ranged GETs. `RedisStore` keeps a pointer record in Redis for each value it spills here (see
//! `redis.rs`, `Spill`); the `spill=` parameters of the store URL configure it (`split_spill`).

use anyhow::Result;
use aws_sdk_s3::{
    error::{ProvideErrorMetadata, SdkError},
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier},
    Client,
};
use futures::{StreamExt, TryStreamExt};

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// None: AWS's own endpoint for the region; else e.g. `http://127.0.0.1:59014`.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// None: the AWS chain's region (environment, profile), else us-east-1.
    pub region: Option<String>,
    /// Key prefix of every object (e.g. `artifacts/`).
    pub prefix: String,
    /// Multipart part size (S3's minimum is 5 MiB) and the ranged-read size.
    pub part_size: usize,
    /// Parts uploaded or ranges read at once per value.
    pub concurrency: usize,
    /// Path-style URLs (`endpoint/bucket/key`), which local S3 servers need.
    pub path_style: bool,
}

impl S3Config {
    pub const MIN_PART: usize = 5 << 20;
}

/// The object tag (URL-encoded, as S3's tagging header wants it) of spilled intermediates.
pub const INTERMEDIATE_TAG: &str = "proofjobs-class=intermediate";

#[derive(Clone)]
pub struct S3Tier {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
    concurrency: usize,
}

impl std::fmt::Debug for S3Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Tier(s3://{}/{})", self.bucket, self.prefix)
    }
}

/// A store error from an S3 SDK error: 404 is a missing artifact, a dispatch failure (connection
/// refused, timeout) or a 5xx/throttling answer is transient, anything else is not.
fn s3_error<E: ProvideErrorMetadata + std::fmt::Debug>(what: &str, e: SdkError<E>) -> anyhow::Error {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().map(str::to_string);
    let described = format!("{what}: {}", code.clone().unwrap_or_else(|| format!("{e:?}")));
    let error = match (&e, status) {
        (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => StoreError::Unavailable(described),
        (_, Some(404)) => StoreError::NotFound(described),
        (_, Some(s)) if s >= 500 || s == 429 || s == 503 => StoreError::Unavailable(described),
        _ if matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) => StoreError::NotFound(described),
        _ if matches!(code.as_deref(), Some("SlowDown" | "RequestTimeout" | "InternalError")) => StoreError::Unavailable(described),
        _ => StoreError::Other(described),
    };
    error.into()
}

impl S3Tier {
    /// Credentials and region come from the standard AWS chain (environment, Pod Identity, ...).
    pub async fn connect(config: S3Config) -> Result<S3Tier> {
        anyhow::ensure!(config.part_size >= S3Config::MIN_PART, "S3 part size {} is under S3's minimum of 5 MiB", config.part_size);
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let region = aws_config::meta::region::RegionProviderChain::first_try(config.region.clone().map(aws_config::Region::new))
            .or_default_provider()
            .or_else("us-east-1");
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http).region(region);
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let s3 = aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.path_style).build();
        Ok(S3Tier {
            client: Client::from_conf(s3),
            bucket: config.bucket,
            prefix: config.prefix,
            part_size: config.part_size,
            concurrency: config.concurrency.max(1),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// The SDK client, for callers that compare against raw S3 calls (store-bench).
    pub fn sdk_client(&self) -> &Client {
        &self.client
    }

    /// Creates the bucket when it does not exist (tests, trials; production buckets come from terraform).
    pub async fn ensure_bucket(&self) -> Result<()> {
        if self.client.head_bucket().bucket(&self.bucket).send().await.is_ok() {
            return Ok(());
        }
        self.client.create_bucket().bucket(&self.bucket).send().await.map_err(|e| s3_error("creating the bucket", e))?;
        Ok(())
    }

    /// Writes `data` under `id`: one PUT up to a part, else a multipart upload with `concurrency`
    /// parts in flight (aborted on failure, so no orphan parts are billed). An intermediate is
    /// tagged `proofjobs-class=intermediate`, so a bucket lifecycle rule can expire it sooner.
    pub async fn put(&self, id: &str, data: impl Into<bytes::Bytes>, intermediate: bool) -> Result<()> {
        let (key, data) = (self.key(id), data.into());
        let tagging = intermediate.then(|| INTERMEDIATE_TAG.to_string());
        if data.len() <= self.part_size {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .set_tagging(tagging)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| s3_error(&format!("writing artifact {id}"), e))?;
            return Ok(());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .set_tagging(tagging)
            .send()
            .await
            .map_err(|e| s3_error(&format!("starting the upload of artifact {id}"), e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let parts: Result<Vec<CompletedPart>> = futures::stream::iter(0..data.len().div_ceil(self.part_size))
            .map(|i| {
                let body = data.slice(i * self.part_size..((i + 1) * self.part_size).min(data.len()));
                let (key, upload_id) = (key.clone(), upload_id.clone());
                async move {
                    let number = i as i32 + 1;
                    let part = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(|e| s3_error(&format!("writing part {number} of artifact {id}"), e))?;
                    Ok(CompletedPart::builder().part_number(number).set_e_tag(part.e_tag().map(str::to_string)).build())
                }
            })
            .buffered(self.concurrency)
            .try_collect()
            .await;
        let parts = match parts {
            Ok(parts) => parts,
            Err(e) => {
                let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(&key).upload_id(&upload_id).send().await;
                return Err(e);
            }
        };
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| s3_error(&format!("completing the upload of artifact {id}"), e))?;
        Ok(())
    }

    /// The length of object `id`, or None when there is none.
    pub async fn object_len(&self, id: &str) -> Result<Option<u64>> {
        match self.client.head_object().bucket(&self.bucket).key(self.key(id)).send().await {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => {
                let e = s3_error(&format!("looking up {id}"), e);
                if super::is_not_found(&e) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// A URL that lets its holder GET object `id` (and nothing else) until `expires_in` has
    /// passed, signed with this tier's credentials: S3 itself refuses it after that, or when any
    /// part of it is changed.
    pub async fn presigned_get(&self, id: &str, expires_in: std::time::Duration) -> Result<String> {
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in)
            .map_err(|e| StoreError::Other(format!("presigning {id}: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(id))
            .presigned(config)
            .await
            .map_err(|e| s3_error(&format!("presigning {id}"), e))?;
        Ok(request.uri().to_string())
    }

    /// Reads artifact `id` with `concurrency` ranged GETs in flight; refuses more than `limit`
    /// bytes. The first range also tells the object's length (its Content-Range), so a value of
    /// one part costs one request and no HEAD precedes the others.
    pub async fn get(&self, id: &str, limit: usize) -> Result<Vec<u8>> {
        let key = self.key(id);
        let (first, len) = self.range(&key, id, 0, self.part_size).await?;
        if len > limit {
            return Err(StoreError::TooLarge(format!("artifact {id} is {len} bytes in S3, over the limit of {limit}")).into());
        }
        let mut value = first;
        if value.len() < len {
            value.extend(self.ranges(&key, id, value.len(), len).await?.concat());
        }
        Ok(value)
    }

    /// Artifact `id`, which is `len` bytes long (its Redis pointer says so), in order as the
    /// ranges came (a reader can decode across them), without a HEAD first; an object of another
    /// length is reported corrupt.
    pub async fn get_pieces(&self, id: &str, len: usize) -> Result<Vec<Vec<u8>>> {
        self.ranges(&self.key(id), id, 0, len).await
    }

    /// Bytes `from..len` of object `key` in part-sized ranges, `concurrency` in flight.
    async fn ranges(&self, key: &str, id: &str, from: usize, len: usize) -> Result<Vec<Vec<u8>>> {
        futures::stream::iter((from..len).step_by(self.part_size))
            .map(|start| async move {
                let (bytes, total) = self.range(key, id, start, (start + self.part_size).min(len)).await?;
                anyhow::ensure!(total == len, StoreError::Corrupt(format!("artifact {id}: {total} bytes in S3, the pointer says {len}")));
                Ok(bytes)
            })
            .buffered(self.concurrency)
            .try_collect()
            .await
    }

    /// Bytes `start..end` of object `key` (fewer at its end) and the object's whole length.
    async fn range(&self, key: &str, id: &str, start: usize, end: usize) -> Result<(Vec<u8>, usize)> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|e| s3_error(&format!("reading artifact {id}"), e))?;
        // "bytes 0-1023/4096"; a server that ignored the range sent the whole object.
        let total = match object.content_range() {
            Some(range) => range.rsplit_once('/').and_then(|(_, n)| n.parse::<usize>().ok()),
            None => object.content_length().map(|n| n.max(0) as usize),
        }
        .ok_or_else(|| StoreError::Corrupt(format!("artifact {id}: S3 gave no length for it")))?;
        let bytes = object.body.collect().await.map_err(|e| StoreError::Unavailable(format!("reading artifact {id}: {e}")))?;
        let bytes = bytes.into_bytes().to_vec();
        let expected = end.min(total).saturating_sub(start);
        anyhow::ensure!(
            bytes.len() == expected || (start == 0 && bytes.len() == total),
            StoreError::Corrupt(format!("artifact {id}: a range came back with {} bytes, not {expected}", bytes.len()))
        );
        Ok((bytes, total))
    }

    /// Deletes objects by artifact id, 1,000 per request (S3's limit); absent ones are no error.
    pub async fn delete(&self, ids: &[String]) -> Result<()> {
        for batch in ids.chunks(1000) {
            let objects: Vec<ObjectIdentifier> =
                batch.iter().map(|id| ObjectIdentifier::builder().key(self.key(id)).build()).collect::<Result<_, _>>()?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(Delete::builder().set_objects(Some(objects)).quiet(true).build()?)
                .send()
                .await
                .map_err(|e| s3_error(&format!("deleting {} artifacts", batch.len()), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod live {
    //! Against the S3-compatible server `scripts/services.sh` starts (PROOFJOBS_S3_ENDPOINT).
    use super::*;

    async fn tier() -> S3Tier {
        let endpoint = std::env::var("PROOFJOBS_S3_ENDPOINT").expect("PROOFJOBS_S3_ENDPOINT: run eval \"$(scripts/services.sh start)\"");
        let tier = S3Tier::connect(S3Config {
            endpoint: Some(endpoint),
            bucket: "proofjobs-live-tests".into(),
            region: None,
            prefix: format!("t{}/", uuid::Uuid::now_v7().simple()),
            part_size: S3Config::MIN_PART,
            concurrency: 4,
            path_style: true,
        })
        .await
        .unwrap();
        tier.ensure_bucket().await.unwrap();
        tier
    }

    #[tokio::test]
    async fn values_round_trip_in_one_put_and_in_parallel_parts() {
        let tier = tier().await;
        for len in [1 << 10, (12 << 20) + 12_345] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let id = format!("value-{len}");
            tier.put(&id, data.clone(), len > 1 << 20).await.unwrap();
            assert!(tier.get(&id, len).await.unwrap() == data, "{len} bytes came back different");
            let refused = tier.get(&id, len - 1).await.unwrap_err();
            assert!(super::super::is_too_large(&refused), "{refused:#}");
            assert!(tier.get_pieces(&id, len).await.unwrap().concat() == data, "{len} bytes in pieces came back different");
            let wrong = tier.get_pieces(&id, len + 1).await.unwrap_err().to_string();
            assert!(wrong.contains(&format!("{len} bytes in S3, the pointer says {}", len + 1)), "{wrong}");
        }
        tier.delete(&["value-1024".to_string(), "never-written".to_string()]).await.unwrap();
        let gone = tier.get("value-1024", 1 << 20).await.unwrap_err();
        assert!(super::super::is_not_found(&gone), "{gone:#}");
    }
}
