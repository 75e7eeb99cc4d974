-- When an ended proof was swept: its intermediate artifacts deleted, its inputs and output given
-- their retention (dispatcher/src/sweep.rs). Proofs that ended before this column existed are
-- swept on the first pass. Rows of swept proofs are purged once older than the row retention.

ALTER TABLE proofs ADD COLUMN swept_at TIMESTAMPTZ;
CREATE INDEX proofs_unswept ON proofs (finished_at) WHERE swept_at IS NULL AND finished_at IS NOT NULL;
CREATE INDEX proofs_swept ON proofs (finished_at) WHERE swept_at IS NOT NULL;
