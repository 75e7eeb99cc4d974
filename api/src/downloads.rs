//! Download URLs for large final proofs. Streaming a proof of hundreds of megabytes through the
//! api costs the api that memory and its clients a long gRPC stream; with an S3 tier behind the
//! store, the api can instead write the proof once, as the exact bytes `GetProof` would stream
//! (an `SP1ProofWithPublicValues` in bincode, what `SP1ProofWithPublicValues::load` reads), to
//! `downloads/<proof id>.bin` in the tier's bucket and hand the client a presigned GET of it. The
//! URL is unguessable (a SigV4 signature over the object's key and the expiry) and S3 refuses it
//! once it has expired or when it is pointed at any other object.
//!
//! The client asks for it (`GetProofRequest.accept_url`), so clients that predate it still get
//! the bytes. The object is not an artifact: the bucket's lifecycle rule for untagged objects
//! (`artifact_retention_days` in terraform) removes it, and a URL is only handed out while the
//! proof's own artifact is still kept.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use proofjobs_pipeline::artifacts::{s3::S3Tier, ArtifactStore};

/// The operator's settings: proofs of at least `threshold` bytes are offered as a URL valid for `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub threshold: usize,
    pub ttl: Duration,
}

impl Settings {
    /// S3 refuses presigned URLs valid for more than 7 days.
    pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
}

/// A presigned download of a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub url: String,
    /// Unix seconds after which S3 refuses the URL.
    pub expires_at: u64,
    pub size: u64,
}

#[derive(Clone)]
pub struct ProofDownloads {
    tier: S3Tier,
    settings: Settings,
}

impl ProofDownloads {
    /// The downloads of `store`'s S3 tier; an error when URLs are asked for but the store has no
    /// tier to put them in (a deployment mistake to report at startup, not on the first GetProof).
    pub fn new(store: &ArtifactStore, settings: Option<Settings>) -> Result<Option<ProofDownloads>> {
        let Some(settings) = settings else { return Ok(None) };
        anyhow::ensure!(
            settings.ttl > Duration::ZERO && settings.ttl <= Settings::MAX_TTL,
            "proof URL lifetime {:?} is outside S3's 1 s to 7 days",
            settings.ttl
        );
        let tier = store.s3_tier().ok_or_else(|| {
            anyhow::anyhow!(
                "download URLs for proofs need an S3 tier: add spill=s3://bucket/prefix to the artifact store URL {}",
                store.describe()
            )
        })?;
        Ok(Some(ProofDownloads { tier: tier.clone(), settings }))
    }

    fn object(proof_id: &str) -> String {
        format!("downloads/{proof_id}.bin")
    }

    /// A URL for the object an earlier call wrote, if there is one: no need to read the proof.
    pub async fn existing(&self, proof_id: &str) -> Result<Option<Offer>> {
        match self.tier.object_len(&Self::object(proof_id)).await? {
            Some(size) if size as usize >= self.settings.threshold => Ok(Some(self.offer(proof_id, size).await?)),
            _ => Ok(None),
        }
    }

    /// Writes `bytes` (the proof as GetProof streams it) and offers them, when they are at least
    /// the threshold; None for a smaller proof, which is streamed.
    pub async fn publish(&self, proof_id: &str, bytes: bytes::Bytes) -> Result<Option<Offer>> {
        if bytes.len() < self.settings.threshold {
            return Ok(None);
        }
        let size = bytes.len() as u64;
        self.tier.put(&Self::object(proof_id), bytes, false).await?;
        Ok(Some(self.offer(proof_id, size).await?))
    }

    async fn offer(&self, proof_id: &str, size: u64) -> Result<Offer> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let url = self.tier.presigned_get(&Self::object(proof_id), self.settings.ttl).await?;
        Ok(Offer { url, expires_at: now + self.settings.ttl.as_secs(), size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proofjobs_pipeline::artifacts::StoreConfig;

    #[tokio::test]
    async fn urls_need_an_s3_tier_and_a_lifetime_s3_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::connect(&format!("file://{}", dir.path().display()), StoreConfig::default()).await.unwrap();
        assert!(ProofDownloads::new(&store, None).unwrap().is_none(), "off unless asked for");
        let asked = Settings { threshold: 1 << 20, ttl: Duration::from_secs(900) };
        let e = ProofDownloads::new(&store, Some(asked)).err().unwrap().to_string();
        assert!(e.contains("need an S3 tier") && e.contains("spill=s3://"), "{e}");
        let store = ArtifactStore::connect(
            "redis://127.0.0.1:1/?spill=s3://b/p/&spill_endpoint=http://127.0.0.1:1&spill_path_style=true",
            StoreConfig::default(),
        )
        .await
        .unwrap();
        for ttl in [Duration::ZERO, Settings::MAX_TTL + Duration::from_secs(1)] {
            let e = ProofDownloads::new(&store, Some(Settings { ttl, ..asked })).err().unwrap().to_string();
            assert!(e.contains("outside S3's 1 s to 7 days"), "{e}");
        }
        let downloads = ProofDownloads::new(&store, Some(asked)).unwrap().unwrap();
        assert_eq!(downloads.settings, asked);
        assert_eq!(ProofDownloads::object("proof_1"), "downloads/proof_1.bin");
    }
}
