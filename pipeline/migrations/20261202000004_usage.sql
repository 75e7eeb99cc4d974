-- What each proof used, for attribution and cost: task-seconds come from the tasks' own times,
-- runner-seconds from the runner rows' lifetimes, each split by whether the runner held GPUs
-- (`runners.gpus`, recorded by the runner from its pod's request). Hourly prices per pool turn
-- runner-seconds into an estimated cost; they are set with `proofctl admin prices`.

ALTER TABLE runners ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;

CREATE TABLE pool_prices (
    pool          TEXT PRIMARY KEY CHECK (pool IN ('cpu', 'gpu')),
    usd_per_hour  DOUBLE PRECISION NOT NULL CHECK (usd_per_hour >= 0),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
