-- Durable state of proofjobs: proofs, their tasks (the stage DAG as the SP1 controller submits it),
-- the messages tasks send each other, and the runner processes/Jobs that work on them.

CREATE TABLE proofs (
    id                 TEXT PRIMARY KEY,
    mode               TEXT NOT NULL,               -- execute | core | compressed | plonk | groth16
    status             TEXT NOT NULL DEFAULT 'pending', -- pending | running | completed | failed | cancelled
    program_artifact   TEXT NOT NULL,
    stdin_artifact     TEXT NOT NULL,
    proof_artifact     TEXT NOT NULL,
    cycle_limit        BIGINT,
    deadline           TIMESTAMPTZ NOT NULL,
    idempotency_key    TEXT UNIQUE,
    requester          BYTEA NOT NULL DEFAULT '',
    failure_cause      TEXT,
    cycles             BIGINT,
    public_values      BYTEA,
    runner_failures    INT NOT NULL DEFAULT 0,
    -- sp1-cluster ClusterService fields, kept so its clients see what they wrote.
    gas_limit          BIGINT,
    handled            BOOLEAN NOT NULL DEFAULT false,
    metadata           TEXT NOT NULL DEFAULT '',
    extra_data         TEXT,
    scheduled_by       TEXT,
    stdin_private      BOOLEAN NOT NULL DEFAULT false,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at        TIMESTAMPTZ
);
CREATE INDEX proofs_active ON proofs (status) WHERE status IN ('pending', 'running');
CREATE INDEX proofs_created ON proofs (created_at, id);

CREATE TABLE tasks (
    id            TEXT PRIMARY KEY,
    proof_id      TEXT NOT NULL REFERENCES proofs(id) ON DELETE CASCADE,
    task_type     INT NOT NULL,
    stage         TEXT,                              -- NULL: bookkeeping task no runner executes
    status        TEXT NOT NULL DEFAULT 'pending',   -- pending | running | succeeded | failed | cancelled
    inputs        TEXT[] NOT NULL,
    outputs       TEXT[] NOT NULL,
    parent_id     TEXT,
    requester     TEXT NOT NULL DEFAULT '',
    attempts      INT NOT NULL DEFAULT 0,
    runner_id     TEXT,
    error         TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ
);
CREATE INDEX tasks_claim ON tasks (proof_id, stage, created_at) WHERE status = 'pending';
CREATE INDEX tasks_proof ON tasks (proof_id, stage);
CREATE INDEX tasks_runner ON tasks (runner_id) WHERE status = 'running';

CREATE TABLE task_messages (
    seq       BIGSERIAL PRIMARY KEY,
    task_id   TEXT NOT NULL,
    proof_id  TEXT NOT NULL,
    payload   BYTEA NOT NULL
);
CREATE INDEX task_messages_task ON task_messages (task_id, seq);

CREATE TABLE runners (
    id            TEXT PRIMARY KEY,
    proof_id      TEXT NOT NULL REFERENCES proofs(id) ON DELETE CASCADE,
    stages        TEXT[] NOT NULL,
    backend       TEXT NOT NULL,                     -- local | kubernetes
    handle        TEXT NOT NULL DEFAULT '',          -- pid (local) or Job name (kubernetes)
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at  TIMESTAMPTZ,
    exited_at     TIMESTAMPTZ,
    exit_code     INT,
    error         TEXT
);
CREATE INDEX runners_live ON runners (proof_id) WHERE exited_at IS NULL;

-- Every change to a proof, task, message or runner wakes the processes that wait on that proof.
CREATE FUNCTION proofjobs_notify_proof() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('proofjobs', NEW.id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION proofjobs_notify_child() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('proofjobs', NEW.proof_id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER proofs_notify AFTER INSERT OR UPDATE ON proofs FOR EACH ROW EXECUTE FUNCTION proofjobs_notify_proof();
CREATE TRIGGER tasks_notify AFTER INSERT OR UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION proofjobs_notify_child();
CREATE TRIGGER task_messages_notify AFTER INSERT ON task_messages FOR EACH ROW EXECUTE FUNCTION proofjobs_notify_child();
CREATE TRIGGER runners_notify AFTER INSERT OR UPDATE ON runners FOR EACH ROW EXECUTE FUNCTION proofjobs_notify_child();
