-- The prover-network API (api/src/network/): callers are addresses recovered from signatures.
-- Nonces order each address's signed requests; programs are registered per requester and vk
-- hash (one requester's registration is never another's program); uploads are the one-shot URLs
-- CreateArtifact hands out; requests map a network request id onto a proof; addresses maps an
-- allowed address onto a requester (allowlist mode).

CREATE TABLE network_nonces (
    address BYTEA PRIMARY KEY,
    next_nonce BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE network_programs (
    vk_hash BYTEA NOT NULL,
    owner TEXT NOT NULL,
    vk BYTEA NOT NULL,
    program_artifact TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (vk_hash, owner)
);

CREATE TABLE network_uploads (
    token TEXT PRIMARY KEY,
    artifact TEXT NOT NULL UNIQUE,
    kind INT NOT NULL,
    owner TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    uploaded_at TIMESTAMPTZ,
    -- SHA-256 of the body stored: a repeat of the same PUT (a lost reply) is answered OK.
    sha256 BYTEA
);
CREATE INDEX network_uploads_expiry ON network_uploads (expires_at);

CREATE TABLE network_requests (
    request_id BYTEA PRIMARY KEY,
    proof_id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    download_token TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE network_addresses (
    address BYTEA PRIMARY KEY,
    requester TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
