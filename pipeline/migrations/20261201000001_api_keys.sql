-- Who may call the api, and whose each proof is. A key is shown to its holder once; only the
-- SHA-256 of the whole key string is stored (keys are 244 random bits, so a fast hash is enough:
-- there is nothing to brute-force). `owner` is the requester a key belongs to; a proof is seen,
-- watched, cancelled and downloaded only by its owner (and admins). Idempotency keys are scoped
-- to the owner, so one requester's key can never return another's proof.

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,                  -- public part, shown by `keys list`
    requester    TEXT NOT NULL,
    secret_hash  BYTEA NOT NULL UNIQUE,
    admin        BOOLEAN NOT NULL DEFAULT false,
    description  TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

ALTER TABLE proofs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
CREATE INDEX proofs_owner_created ON proofs (owner, created_at, id);
ALTER TABLE proofs DROP CONSTRAINT proofs_idempotency_key_key;
CREATE UNIQUE INDEX proofs_owner_idempotency_key ON proofs (owner, idempotency_key);
