-- Runner pods get database rights on their own proof and nothing else. They connect as a login
-- role that is a member of `proofjobs_runner` (created by the operator, see docs/OPERATING.md)
-- and present a token the dispatcher issued for the proof when it launched their Job. Row-level
-- security limits every table they can touch to the rows of that proof; the keys, quotas and
-- token tables are not granted at all. The api and the dispatcher connect as the tables' owner,
-- which row-level security does not restrict.

DO $$
BEGIN
    CREATE ROLE proofjobs_runner NOLOGIN;
EXCEPTION
    -- Roles are cluster-wide: another database of the same server created it first.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Only the SHA-256 of a token is stored; a token is good for one proof.
CREATE TABLE runner_tokens (
    token_hash  BYTEA PRIMARY KEY,
    proof_id    TEXT NOT NULL REFERENCES proofs(id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX runner_tokens_proof ON runner_tokens (proof_id);

-- The proof this session's token (`proofjobs.runner_token`, set at connect) was issued for, or
-- NULL. SECURITY DEFINER so that runners can use the token table without being able to read it.
CREATE FUNCTION proofjobs_runner_proof() RETURNS TEXT
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT proof_id FROM runner_tokens
    WHERE token_hash = sha256(convert_to(coalesce(current_setting('proofjobs.runner_token', true), ''), 'UTF8'))
$$;
REVOKE ALL ON FUNCTION proofjobs_runner_proof() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION proofjobs_runner_proof() TO proofjobs_runner;

-- What the task-runner does: read its proof, finish it (execute mode, bad input), claim and
-- finish tasks, submit follow-up tasks, exchange task messages, keep its runner row.
GRANT SELECT ON proofs TO proofjobs_runner;
GRANT UPDATE (status, failure_cause, cycles, public_values, finished_at, updated_at) ON proofs TO proofjobs_runner;
GRANT SELECT, INSERT, UPDATE ON tasks TO proofjobs_runner;
GRANT SELECT, INSERT ON task_messages TO proofjobs_runner;
GRANT USAGE ON SEQUENCE task_messages_seq_seq TO proofjobs_runner;
GRANT SELECT, INSERT, UPDATE ON runners TO proofjobs_runner;

-- Runners see and write their own proof's rows; every other role that is not the owner sees
-- everything, as before.
ALTER TABLE proofs ENABLE ROW LEVEL SECURITY;
CREATE POLICY runner_own_proof ON proofs TO proofjobs_runner USING (id = proofjobs_runner_proof());
CREATE POLICY not_a_runner ON proofs USING (NOT pg_has_role(current_user, 'proofjobs_runner', 'MEMBER'));

ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
CREATE POLICY runner_own_proof ON tasks TO proofjobs_runner USING (proof_id = proofjobs_runner_proof());
CREATE POLICY not_a_runner ON tasks USING (NOT pg_has_role(current_user, 'proofjobs_runner', 'MEMBER'));

ALTER TABLE task_messages ENABLE ROW LEVEL SECURITY;
CREATE POLICY runner_own_proof ON task_messages TO proofjobs_runner USING (proof_id = proofjobs_runner_proof());
CREATE POLICY not_a_runner ON task_messages USING (NOT pg_has_role(current_user, 'proofjobs_runner', 'MEMBER'));

ALTER TABLE runners ENABLE ROW LEVEL SECURITY;
CREATE POLICY runner_own_proof ON runners TO proofjobs_runner USING (proof_id = proofjobs_runner_proof());
CREATE POLICY not_a_runner ON runners USING (NOT pg_has_role(current_user, 'proofjobs_runner', 'MEMBER'));
