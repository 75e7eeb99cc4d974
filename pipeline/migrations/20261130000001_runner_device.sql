-- The accelerator a runner proves on (model, compute capability, memory, utilisation at start),
-- written by the runner after its GPU check; NULL for CPU runners.
ALTER TABLE runners ADD COLUMN device TEXT;
