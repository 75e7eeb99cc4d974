-- The prover-network API (api/src/network/): callers are addresses recovered from signatures.
-- Nonces order each address's signed requests; programs are registered once per vk hash;
-- uploads are the presigned URLs CreateArtifact hands out; requests map a network request id
-- onto a proof; addresses maps an allowed address onto a requester (allowlist mode).

CREATE TABLE network_nonces (
    address BYTEA PRIMARY KEY,
    next_nonce BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE network_programs (
    vk_hash BYTEA PRIMARY KEY,
    vk BYTEA NOT NULL,
    program_artifact TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE network_uploads (
    token TEXT PRIMARY KEY,
    artifact TEXT NOT NULL UNIQUE,
    kind INT NOT NULL,
    owner TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    uploaded_at TIMESTAMPTZ
);
CREATE INDEX network_uploads_expiry ON network_uploads (expires_at);

CREATE TABLE network_requests (
    request_id BYTEA PRIMARY KEY,
    proof_id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    deadline BIGINT NOT NULL,
    download_token TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE network_addresses (
    address BYTEA PRIMARY KEY,
    requester TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
