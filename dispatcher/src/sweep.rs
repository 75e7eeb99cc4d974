//! Nothing left behind: once a proof has ended and its runners are gone, its intermediate
//! artifacts (shards, records, partial proofs: everything its tasks named besides its program,
//! stdin and output) are deleted from the store, its program and stdin expire after the input
//! retention unless another unfinished proof reads them, and its output expires after the proof
//! retention. Rows of proofs that ended before the row retention are purged in batches. The
//! store's own expiry on intermediates (`StoreConfig::intermediate_ttl`) is the backstop for
//! whatever a sweep cannot see. Runs on the leading dispatcher only, beside the reconcile loop.

use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use proofjobs_pipeline::{
    artifacts::ArtifactStore,
    state::{Db, EndedProof},
};

/// How long what a proof leaves behind is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Program and stdin, after the last proof that reads them ends.
    pub inputs: Duration,
    /// The final proof, for clients to fetch.
    pub proofs: Duration,
    /// Rows of ended proofs (status, usage, quotes): what `Get` and `admin usage` report on.
    pub rows: Duration,
    /// Time between sweeps.
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            inputs: Duration::from_secs(24 * 3600),
            proofs: Duration::from_secs(7 * 24 * 3600),
            rows: Duration::from_secs(30 * 24 * 3600),
            every: Duration::from_secs(30),
        }
    }
}

/// Proofs per sweep and rows per purge transaction.
const BATCH: i64 = 200;
/// A proof is swept this long after it ended at the earliest, so that a runner's last writes
/// (it may still be stopping) land before the sweep looks.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub proofs: usize,
    pub deleted_artifacts: usize,
    pub purged_rows: u64,
}

pub struct Sweeper {
    pub db: Db,
    /// None: the store is not this dispatcher's to clean (no `--artifact-store`); rows are still purged.
    pub store: Option<ArtifactStore>,
    pub retention: Retention,
}

impl Sweeper {
    /// Sweeps and purges every `retention.every` until `stop` turns true. Errors are logged and
    /// retried on the next round: a store that is down delays the sweep, it loses nothing.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            match self.once().await {
                Ok(s) if s != Swept::default() => tracing::info!(
                    proofs = s.proofs,
                    deleted_artifacts = s.deleted_artifacts,
                    purged_rows = s.purged_rows,
                    "swept ended proofs"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("sweeping ended proofs: {e:#}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retention.every) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    pub async fn once(&self) -> Result<Swept> {
        let mut swept = Swept::default();
        let settled = Utc::now() - chrono::Duration::from_std(SETTLE)?;
        for proof in self.db.unswept_proofs(settled, BATCH).await? {
            swept.deleted_artifacts += self.sweep(&proof).await?;
            self.db.mark_swept(&proof.id).await?;
            swept.proofs += 1;
        }
        let cutoff = Utc::now() - chrono::Duration::from_std(self.retention.rows)?;
        loop {
            let n = self.db.purge_batch(cutoff, BATCH).await?;
            swept.purged_rows += n;
            if n < BATCH as u64 {
                break;
            }
        }
        Ok(swept)
    }

    /// The store side of one proof; returns how many intermediates it deleted.
    async fn sweep(&self, proof: &EndedProof) -> Result<usize> {
        let Some(store) = &self.store else { return Ok(0) };
        let intermediates = self.db.intermediate_artifacts(proof).await?;
        store.delete_ids(&intermediates).await?;
        let inputs = [proof.program_artifact.clone(), proof.stdin_artifact.clone()];
        let in_use = self.db.inputs_in_use(&inputs).await?;
        for input in inputs.iter().filter(|id| !in_use.contains(*id)) {
            store.set_ttl(input, self.retention.inputs).await?;
        }
        store.set_ttl(&proof.proof_artifact, self.retention.proofs).await?;
        Ok(intermediates.len())
    }
}
