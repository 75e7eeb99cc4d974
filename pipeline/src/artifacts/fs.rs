//! Directory-backed artifact store for embedded mode (one machine, no Redis): one file per
//! artifact, same encoding as Redis, written atomically (temp file + rename) so a reader never
//! sees a partial artifact.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;
use sp1_prover_types::{ArtifactClient, ArtifactId, ArtifactType};

use super::{codec, StoreError};

#[derive(Debug, Clone)]
pub struct FsStore {
    pub root: PathBuf,
}

impl FsStore {
    /// Uses (and creates if needed) the directory `root`.
    pub async fn new(root: PathBuf) -> Result<FsStore> {
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|e| StoreError::Other(format!("cannot create artifact directory {}: {e}", root.display())))?;
        Ok(FsStore { root })
    }

    /// The stored (encoded) bytes of an artifact.
    pub(crate) async fn fetch_encoded(&self, id: &str) -> Result<Vec<u8>> {
        let path = self.path_of(id)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound(id.to_string()).into()),
            Err(e) => Err(StoreError::Other(format!("reading {}: {e}", path.display())).into()),
        }
    }

    /// `file://<root>`, for logs.
    pub fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    /// The directory is still there and is a directory.
    pub async fn ping(&self) -> Result<()> {
        let meta = tokio::fs::metadata(&self.root)
            .await
            .map_err(|e| StoreError::Other(format!("artifact directory {}: {e}", self.root.display())))?;
        anyhow::ensure!(meta.is_dir(), "artifact store {} is not a directory", self.root.display());
        Ok(())
    }

    /// No-op: files do not expire (the owner deletes them).
    pub async fn set_ttl(&self, id: &str, _ttl: Duration) -> Result<()> {
        self.path_of(id)?;
        Ok(())
    }

    /// Path of artifact `id`; rejects ids that could escape or collide with temp files.
    pub fn path_of(&self, id: &str) -> Result<PathBuf> {
        if id.is_empty() || id.contains('/') || id.contains('\\') || id.contains('\0') || id.contains("..") || id.starts_with('.') {
            return Err(StoreError::Other(format!("invalid artifact id {id:?} for file store")).into());
        }
        Ok(self.root.join(id))
    }

    async fn write_atomic(&self, path: &Path, id: &str, bytes: &[u8]) -> Result<()> {
        let tmp = self.root.join(format!(".{id}.tmp-{}", uuid::Uuid::new_v4().simple()));
        if let Err(e) = tokio::fs::write(&tmp, bytes).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(StoreError::Other(format!("writing {}: {e}", tmp.display())).into());
        }
        if let Err(e) = tokio::fs::rename(&tmp, path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(StoreError::Other(format!("renaming into {}: {e}", path.display())).into());
        }
        Ok(())
    }
}

impl ArtifactClient for FsStore {
    async fn upload_raw(&self, artifact: &impl ArtifactId, _artifact_type: ArtifactType, data: Vec<u8>) -> Result<()> {
        let id = artifact.id();
        let path = self.path_of(id)?;
        let encoded = codec::encode_async(data).await?;
        self.write_atomic(&path, id, &encoded).await
    }

    async fn download_raw(&self, artifact: &impl ArtifactId, _artifact_type: ArtifactType) -> Result<Vec<u8>> {
        let id = artifact.id();
        codec::decode_async(id, vec![self.fetch_encoded(id).await?], None).await
    }

    async fn exists(&self, artifact: &impl ArtifactId, _artifact_type: ArtifactType) -> Result<bool> {
        let path = self.path_of(artifact.id())?;
        match tokio::fs::metadata(&path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Other(format!("stat {}: {e}", path.display())).into()),
        }
    }

    async fn delete(&self, artifact: &impl ArtifactId, _artifact_type: ArtifactType) -> Result<()> {
        let path = self.path_of(artifact.id())?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Other(format!("deleting {}: {e}", path.display())).into()),
        }
    }

    async fn delete_batch(&self, artifacts: &[impl ArtifactId], artifact_type: ArtifactType) -> Result<()> {
        for a in artifacts {
            self.delete(a, artifact_type).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::codec::tests::random_bytes;

    async fn temp_store() -> FsStore {
        let dir = std::env::temp_dir().join(format!("pj-fs-store-{}", uuid::Uuid::new_v4()));
        FsStore::new(dir).await.unwrap()
    }

    fn new_id() -> String {
        format!("artifact_fs_{}", uuid::Uuid::new_v4().simple())
    }

    #[tokio::test]
    async fn fs_round_trip_exists_delete() {
        let store = temp_store().await;
        let (a, b) = (new_id(), new_id());
        let small = b"small artifact".to_vec();
        let big = random_bytes(3 << 20, 11);
        store.upload_raw(&a, ArtifactType::Program, small.clone()).await.unwrap();
        store.upload_raw(&b, ArtifactType::UnspecifiedArtifactType, big.clone()).await.unwrap();
        assert_eq!(store.download_raw(&a, ArtifactType::Program).await.unwrap(), small);
        assert_eq!(store.download_raw(&b, ArtifactType::UnspecifiedArtifactType).await.unwrap(), big);
        // Overwrite replaces.
        store.upload_raw(&a, ArtifactType::Program, b"v2".to_vec()).await.unwrap();
        assert_eq!(store.download_raw(&a, ArtifactType::Program).await.unwrap(), b"v2");
        assert!(store.exists(&a, ArtifactType::Program).await.unwrap());
        store.delete(&a, ArtifactType::Program).await.unwrap();
        assert!(!store.exists(&a, ArtifactType::Program).await.unwrap());
        store.delete(&a, ArtifactType::Program).await.unwrap(); // already gone: fine
        let e = store.download_raw(&a, ArtifactType::Program).await.unwrap_err();
        assert!(super::super::is_not_found(&e), "{e}");
        assert!(e.to_string().contains(&format!("artifact {a} not found")), "{e}");
        store.delete_batch(&[b.clone(), new_id()], ArtifactType::UnspecifiedArtifactType).await.unwrap();
        assert!(!store.exists(&b, ArtifactType::UnspecifiedArtifactType).await.unwrap());
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(&store.root).unwrap().count(), 0);
        std::fs::remove_dir_all(&store.root).unwrap();
    }

    #[tokio::test]
    async fn fs_detects_corruption() {
        let store = temp_store().await;
        let id = new_id();
        store.upload_raw(&id, ArtifactType::Stdin, random_bytes(50_000, 12)).await.unwrap();
        let path = store.path_of(&id).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[codec::HEADER_LEN + 20_000] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
        let e = store.download_raw(&id, ArtifactType::Stdin).await.unwrap_err().to_string();
        assert!(e.contains("checksum mismatch") && e.contains(&id), "{e}");
        std::fs::remove_dir_all(&store.root).unwrap();
    }

    #[tokio::test]
    async fn fs_rejects_bad_ids() {
        let store = temp_store().await;
        for id in ["a/b", "../etc", "x..y", "", ".hidden"] {
            let id = id.to_string();
            assert!(store.upload_raw(&id, ArtifactType::Stdin, vec![1]).await.is_err(), "{id:?}");
            assert!(store.download_raw(&id, ArtifactType::Stdin).await.is_err(), "{id:?}");
            assert!(store.exists(&id, ArtifactType::Stdin).await.is_err(), "{id:?}");
            assert!(store.delete(&id, ArtifactType::Stdin).await.is_err(), "{id:?}");
        }
        std::fs::remove_dir_all(&store.root).unwrap();
    }
}
