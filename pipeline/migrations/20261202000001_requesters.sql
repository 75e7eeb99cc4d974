-- What each requester may use. The row named '*' holds the defaults; a requester's own row
-- overrides them field by field (NULL: the default applies). Both the api (cycle limit, deadline)
-- and the dispatcher (proofs in flight, GPU runners, weight) read this one table, so a change
-- made with `proofctl admin quota set` takes effect everywhere without a restart.

CREATE TABLE requesters (
    name               TEXT PRIMARY KEY,
    -- Share of the GPU slots when they are contended, relative to other requesters' weights.
    weight             INTEGER CHECK (weight BETWEEN 1 AND 1000),
    -- Proofs started and unfinished at once; more wait as `queued-over-quota`.
    max_in_flight      INTEGER CHECK (max_in_flight >= 1),
    -- GPU runner pods at once, all its proofs together.
    max_gpu_runners    INTEGER CHECK (max_gpu_runners >= 1),
    -- The largest cycle limit a request may carry (and the one it gets when it names none).
    max_cycles         BIGINT CHECK (max_cycles >= 1),
    -- How far ahead a request's deadline may be.
    max_deadline_secs  BIGINT CHECK (max_deadline_secs >= 1),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Why a pending proof has not started yet (`queued-over-quota`); NULL once it runs.
ALTER TABLE proofs ADD COLUMN waiting TEXT;
