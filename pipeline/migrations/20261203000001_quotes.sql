-- Quotes: what a program would cost before it is proved. A quote executes the program (an
-- execute-mode proof, whose id the quote takes) and estimates the asked-for mode from the
-- figures of this cluster's own completed proofs. A proof submitted with a quote id keeps it, so
-- that the estimate can be set against the actual figures when the proof ends.

CREATE TABLE quotes (
    id               TEXT PRIMARY KEY REFERENCES proofs (id) ON DELETE CASCADE,
    owner            TEXT NOT NULL,
    mode             TEXT NOT NULL,
    cycles           BIGINT NOT NULL,
    -- How many completed proofs of the mode the rates come from (0: no estimate).
    basis_proofs     INTEGER NOT NULL,
    eta_secs         DOUBLE PRECISION NOT NULL,
    scale_up_secs    DOUBLE PRECISION NOT NULL,
    cpu_task_secs    DOUBLE PRECISION NOT NULL,
    gpu_task_secs    DOUBLE PRECISION NOT NULL,
    cpu_runner_secs  DOUBLE PRECISION NOT NULL,
    gpu_runner_secs  DOUBLE PRECISION NOT NULL,
    cost_usd         DOUBLE PRECISION NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE proofs ADD COLUMN quote_id TEXT REFERENCES quotes (id) ON DELETE SET NULL;
