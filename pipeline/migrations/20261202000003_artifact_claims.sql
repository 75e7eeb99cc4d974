-- Which requester an artifact id belongs to. sp1-cluster's clients write program and stdin to the
-- store themselves, so the api learns of an artifact only when a request names it: the first
-- request to name an id claims it for its requester, and a later request by anyone else that
-- names it is told the artifact does not exist. Artifacts the api creates (our own submit path,
-- proof outputs) are claimed when they are made. Output ids that are in use cannot be named again.

CREATE TABLE artifact_claims (
    artifact_id  TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
