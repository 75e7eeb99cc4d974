-- Retry state per runner group of a proof, durable so that a restarted dispatcher keeps counting
-- failures (crashes, kills, hangs) and hand-backs (exit 69/75), and keeps honouring backoff.
CREATE TABLE runner_groups (
    proof_id    TEXT NOT NULL REFERENCES proofs(id) ON DELETE CASCADE,
    stages      TEXT[] NOT NULL,
    failures    INT NOT NULL DEFAULT 0,
    retries     INT NOT NULL DEFAULT 0,
    not_before  TIMESTAMPTZ,
    PRIMARY KEY (proof_id, stages)
);
INSERT INTO runner_groups (proof_id, stages, failures)
    SELECT p.id, r.stages, p.runner_failures FROM proofs p
    JOIN (SELECT DISTINCT ON (proof_id) proof_id, stages FROM runners ORDER BY proof_id, started_at) r ON r.proof_id = p.id
    WHERE p.runner_failures > 0;
ALTER TABLE proofs DROP COLUMN runner_failures;

-- Heartbeats (every few seconds per runner) wake nobody: the dispatcher reads them on its passes.
DROP TRIGGER runners_notify ON runners;
CREATE TRIGGER runners_notify_insert AFTER INSERT ON runners FOR EACH ROW EXECUTE FUNCTION proofjobs_notify_child();
CREATE TRIGGER runners_notify_update AFTER UPDATE ON runners FOR EACH ROW
    WHEN (OLD.heartbeat_at IS NOT DISTINCT FROM NEW.heartbeat_at) EXECUTE FUNCTION proofjobs_notify_child();

-- A runner's end is recorded twice: by the runner itself (exited_at, its exit code and last
-- words) and by the dispatcher once it has acted on it (reaped_at). Until then the dispatcher
-- still sees the row, so an exit the runner recorded before its process went is never missed.
ALTER TABLE runners ADD COLUMN reaped_at TIMESTAMPTZ;
UPDATE runners SET reaped_at = exited_at WHERE exited_at IS NOT NULL;
CREATE INDEX runners_unreaped ON runners (backend) WHERE reaped_at IS NULL;
