//! What one claimed task does, by SP1 task type. Each task asks `StageProvers` for the part of
//! SP1 it needs, built on first use: a runner that only executes a program never builds a prover.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use proofjobs_pipeline::{
    artifacts::{self, ArtifactStore},
    bus::PgBus,
    stage::Stage,
    state::{ClaimedTask, Db, ProofStatus, TaskState},
};
use proofjobs_task_runner::provers::StageProvers;
use sp1_core_executor::{Program, SP1Context, SP1CoreOpts};
use sp1_core_machine::io::SP1Stdin;
use sp1_prover::worker::{
    execute_with_options, CoreExecuteTaskRequest, ProofId, RawTaskRequest, RequesterId, SP1ExecutorConfig, TaskError, TaskId,
};
use sp1_prover_types::{Artifact, ArtifactClient, ArtifactType, TaskType};

/// How a task ended, as far as the runner's exit code is concerned.
pub enum Outcome {
    Done,
    /// The proof's own input is unusable; the proof was failed with the reason.
    BadInput,
    /// The artifact store (Redis or its S3 tier) cannot be reached: the runner hands its tasks
    /// back uncounted and exits 75, and the dispatcher starts another after a backoff.
    StoreUnavailable,
}

pub struct TaskContext {
    runner_id: String,
    stages: Vec<Stage>,
    db: Db,
    store: ArtifactStore,
    provers: StageProvers<ArtifactStore, PgBus>,
    /// Set before the proof is failed for bad input, so the exit code says 65 even when the
    /// dispatcher's SIGTERM (sent because the proof just ended) wins the race with our own exit.
    found_bad_input: AtomicBool,
}

impl TaskContext {
    pub fn new(
        runner_id: String,
        stages: Vec<Stage>,
        db: Db,
        store: ArtifactStore,
        provers: StageProvers<ArtifactStore, PgBus>,
    ) -> TaskContext {
        TaskContext { runner_id, stages, db, store, provers, found_bad_input: AtomicBool::new(false) }
    }

    pub async fn finish(&self) {
        self.provers.finish().await;
    }

    /// Builds the proving worker before any task asks for it.
    pub async fn prefetch_worker(&self) -> anyhow::Result<()> {
        self.provers.worker().await.map(drop)
    }

    pub fn found_bad_input(&self) -> bool {
        self.found_bad_input.load(Ordering::SeqCst)
    }

    pub async fn run(&self, task: ClaimedTask) -> Outcome {
        let kind = TaskType::try_from(task.task_type).unwrap_or(TaskType::UnspecifiedTaskType);
        tracing::info!(task = %task.id, kind = kind.as_str_name(), attempt = task.attempts, "task started");
        let started = std::time::Instant::now();
        let result = self.dispatch(kind, &task).await;
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                tracing::info!(task = %task.id, kind = kind.as_str_name(), secs, "task succeeded");
                // The controller and the execute-only task record their own success, before the proof's.
                if !records_own_success(kind) {
                    match self.db.complete_task(&task.id, &task.claim()).await {
                        Ok(true) => {}
                        Ok(false) => claim_lost(&task),
                        Err(e) => tracing::error!("recording success of {}: {e:#}", task.id),
                    }
                }
                Outcome::Done
            }
            Err(Failure::ClaimLost) => {
                claim_lost(&task);
                Outcome::Done
            }
            Err(Failure::BadInput(reason)) => {
                tracing::error!(task = %task.id, "bad input: {reason}");
                self.found_bad_input.store(true, Ordering::SeqCst);
                match self.fail_proof(&task, &reason).await {
                    true => Outcome::BadInput,
                    false => Outcome::Done,
                }
            }
            // SP1's worker reports a store error as fatal whatever it was; one that says the
            // store is unreachable for now must not fail the task, let alone the proof.
            Err(Failure::Task(TaskError::Retryable(e) | TaskError::Fatal(e))) if artifacts::is_transient(&e) => {
                tracing::error!(task = %task.id, kind = kind.as_str_name(), secs, "artifact store unavailable, handing the work back: {e:#}");
                Outcome::StoreUnavailable
            }
            // A store that lost data (Redis restarted without persistence, a value evicted or
            // flushed) cannot give it back: no retry helps, so the proof fails naming what is gone.
            Err(Failure::Task(TaskError::Retryable(e) | TaskError::Fatal(e))) if artifacts::is_not_found(&e) => {
                let id = artifacts::missing_artifact(&e).unwrap_or_default();
                let cause = format!(
                    "{} lost: artifact {id} is gone from the artifact store {} (was it restarted or flushed without persistence?): {e:#}",
                    kind.as_str_name(),
                    self.store.describe()
                );
                tracing::error!(task = %task.id, secs, "{cause}");
                self.fail_proof(&task, &cause).await;
                Outcome::Done
            }
            Err(Failure::Task(err)) => {
                let (retryable, message) = match &err {
                    TaskError::Retryable(e) => (true, format!("{e:#}")),
                    TaskError::Fatal(e) => (false, format!("{e:#}")),
                    TaskError::Execution(e) => (false, format!("program execution failed: {e}")),
                };
                tracing::error!(task = %task.id, kind = kind.as_str_name(), retryable, secs, "task failed: {message}");
                let state = match self.db.fail_task(&task.id, &task.claim(), &message, retryable).await {
                    Ok(Some(state)) => state,
                    Ok(None) => {
                        claim_lost(&task);
                        return Outcome::Done;
                    }
                    Err(e) => {
                        tracing::error!("recording failure of {}: {e:#}", task.id);
                        TaskState::Failed
                    }
                };
                // The controller and executor carry the whole proof: when they fail for good, so does the proof.
                let proof_level = matches!(kind, TaskType::Controller | TaskType::ExecuteOnly | TaskType::CoreExecute);
                if state == TaskState::Failed && (proof_level || matches!(err, TaskError::Execution(_))) {
                    let cause = format!("{} failed: {message}", kind.as_str_name());
                    let _ = self.db.finish_proof(&task.proof_id, ProofStatus::Failed, Some(&cause), None, None).await;
                }
                Outcome::Done
            }
        }
    }

    /// Fails the task for good and its proof with `cause`, which no retry can change; false
    /// (and nothing failed) when our claim on the task was lost.
    async fn fail_proof(&self, task: &ClaimedTask, cause: &str) -> bool {
        if let Ok(None) = self.db.fail_task(&task.id, &task.claim(), cause, false).await {
            claim_lost(task);
            return false;
        }
        let _ = self.db.finish_proof(&task.proof_id, ProofStatus::Failed, Some(cause), None, None).await;
        let _ = self.db.set_runner_error(&self.runner_id, cause).await;
        true
    }

    /// Marks the task succeeded under our claim; a lost claim ends the task without a result.
    async fn record_success(&self, task: &ClaimedTask) -> Result<(), Failure> {
        match self.db.complete_task(&task.id, &task.claim()).await.map_err(retryable)? {
            true => Ok(()),
            false => Err(Failure::ClaimLost),
        }
    }

    async fn dispatch(&self, kind: TaskType, task: &ClaimedTask) -> Result<(), Failure> {
        let raw = raw_request(task);
        let task_id = TaskId::new(task.id.clone());
        match kind {
            TaskType::ExecuteOnly => self.execute_only(task).await,
            TaskType::Controller => {
                self.check_program_inputs(&task.inputs).await?;
                // A SNARK proof whose wrap cannot run here fails now, not after the compressed proof.
                let wrap_system = match task.inputs.get(2).map(String::as_str) {
                    Some("3") => Some("plonk"),
                    Some("4") => Some("groth16"),
                    _ => None,
                };
                if let Some(system) = wrap_system.filter(|_| self.stages.contains(&Stage::Wrap)) {
                    check_circuit_artifacts(system).map_err(|reason| fatal(anyhow::anyhow!(reason)))?;
                }
                let output = self.provers.controller().await.run(raw).await?;
                // The task is done before the proof is: finishing the proof cancels open tasks.
                self.record_success(task).await?;
                let finished = self
                    .db
                    .finish_proof(
                        &task.proof_id,
                        ProofStatus::Completed,
                        None,
                        Some(output.cycles as i64),
                        Some(&output.public_value_stream),
                    )
                    .await
                    .map_err(retryable)?;
                if !finished {
                    tracing::warn!("proof {} had already finished; result not recorded", task.proof_id);
                }
                Ok(())
            }
            TaskType::CoreExecute => {
                let request = CoreExecuteTaskRequest::from_raw(raw)?;
                self.provers.controller().await.execute(task_id, request).await?;
                Ok(())
            }
            TaskType::SetupVkey => {
                let elf = first(&task.inputs)?;
                let out = first(&task.outputs)?;
                self.provers.setup_vkey(&elf, &out).await.map_err(fatal)?;
                Ok(())
            }
            TaskType::ProveShard => {
                self.provers.worker().await.map_err(fatal)?.prove_shard(raw, &self.store).await?;
                Ok(())
            }
            TaskType::RecursionReduce => {
                self.provers.worker().await.map_err(fatal)?.recursion_reduce(raw, &self.store).await?;
                Ok(())
            }
            TaskType::RecursionDeferred => {
                self.provers.worker().await.map_err(fatal)?.prove_deferred(raw).await?;
                Ok(())
            }
            TaskType::ShrinkWrap => {
                self.provers.worker().await.map_err(fatal)?.shrink_wrap(raw).await?;
                Ok(())
            }
            TaskType::PlonkWrap | TaskType::Groth16Wrap => {
                let system = if kind == TaskType::PlonkWrap { "plonk" } else { "groth16" };
                check_circuit_artifacts(system).map_err(|reason| {
                    // Not the proof's fault and not transient: a configuration gap the operator must close.
                    Failure::Task(TaskError::Fatal(anyhow::anyhow!(reason)))
                })?;
                let worker = self.provers.worker().await.map_err(fatal)?;
                if kind == TaskType::PlonkWrap {
                    worker.plonk(raw).await?;
                } else {
                    worker.groth16(raw).await?;
                }
                Ok(())
            }
            other => Err(fatal(anyhow::anyhow!("task type {} is not run by proofjobs runners", other.as_str_name()))),
        }
    }

    /// The program and stdin of a proof must be what they claim to be before anything is proved.
    /// Inputs: [program, stdin, ...] for both CONTROLLER and our EXECUTE_ONLY.
    async fn check_program_inputs(&self, inputs: &[String]) -> Result<(Arc<Program>, SP1Stdin), Failure> {
        let [program, stdin, ..] = inputs else {
            return Err(Failure::BadInput("the task names no program and stdin artifacts".into()));
        };
        let elf: Vec<u8> =
            self.store.download_program(&Artifact(program.clone())).await.map_err(|e| load_failure("program", program, e))?;
        let program = Program::from(&elf).map_err(|e| Failure::BadInput(format!("the program is not a valid SP1 RISC-V ELF: {e}")))?;
        let stdin_type = ArtifactType::Stdin;
        let bytes = self.store.download_raw(&Artifact(stdin.clone()), stdin_type).await.map_err(|e| load_failure("stdin", stdin, e))?;
        let stdin: SP1Stdin =
            bincode::deserialize(&bytes).map_err(|e| Failure::BadInput(format!("stdin is not a bincode-serialized SP1Stdin: {e}")))?;
        Ok((Arc::new(program), stdin))
    }

    /// EXECUTE_ONLY inputs: [program, stdin, cycle_limit or ""].
    async fn execute_only(&self, task: &ClaimedTask) -> Result<(), Failure> {
        let (program, stdin) = self.check_program_inputs(&task.inputs).await?;
        let cycle_limit = task.inputs.get(2).and_then(|s| s.parse::<u64>().ok());
        let context = SP1Context { max_cycles: cycle_limit, ..SP1Context::default() };
        let (public_values, _digest, report) =
            execute_with_options(program, stdin, context, SP1CoreOpts::default(), SP1ExecutorConfig::default())
                .await
                .map_err(|e| Failure::Task(TaskError::Fatal(e)))?;
        if report.exit_code != 0 {
            return Err(Failure::Task(TaskError::Fatal(anyhow::anyhow!(
                "the program halted with exit code {} (HALT_WITH_NON_ZERO_EXIT_CODE)",
                report.exit_code
            ))));
        }
        let cycles = report.total_instruction_count() as i64;
        let pv = public_values.to_vec();
        if let Some(out) = task.outputs.first() {
            self.store.upload(&Artifact(out.clone()), (cycles as u64, pv.clone())).await.map_err(retryable)?;
        }
        self.record_success(task).await?;
        self.db.finish_proof(&task.proof_id, ProofStatus::Completed, None, Some(cycles), Some(&pv)).await.map_err(retryable)?;
        Ok(())
    }
}

/// Task types whose success is recorded inside the task, because the proof's result follows it.
fn records_own_success(kind: TaskType) -> bool {
    matches!(kind, TaskType::Controller | TaskType::ExecuteOnly)
}

fn claim_lost(task: &ClaimedTask) {
    tracing::warn!(
        task = %task.id,
        attempt = task.attempts,
        "the task was handed to another runner while this one worked on it (this runner was declared gone); its result is dropped"
    );
}

pub enum Failure {
    BadInput(String),
    Task(TaskError),
    /// Our claim on the task was revoked (this runner was declared gone) and the task handed on.
    ClaimLost,
}

impl From<TaskError> for Failure {
    fn from(e: TaskError) -> Self {
        Failure::Task(e)
    }
}

fn fatal(e: anyhow::Error) -> Failure {
    Failure::Task(TaskError::Fatal(e))
}

fn retryable(e: anyhow::Error) -> Failure {
    Failure::Task(TaskError::Retryable(e))
}

fn load_failure(what: &str, id: &str, e: anyhow::Error) -> Failure {
    if artifacts::is_transient(&e) {
        retryable(e.context(format!("loading {what} artifact {id}")))
    } else if artifacts::is_not_found(&e) {
        // The api saw it stored when the proof was submitted: it is lost, not bad input.
        fatal(e.context(format!("loading the {what}")))
    } else {
        Failure::BadInput(format!("{what} artifact {id} could not be read: {e:#}"))
    }
}

fn first(ids: &[String]) -> Result<Artifact, Failure> {
    ids.first().map(|s| Artifact(s.clone())).ok_or_else(|| fatal(anyhow::anyhow!("task has no artifact where one is required")))
}

fn raw_request(task: &ClaimedTask) -> RawTaskRequest {
    RawTaskRequest {
        inputs: task.inputs.iter().cloned().map(Artifact).collect(),
        outputs: task.outputs.iter().cloned().map(Artifact).collect(),
        context: sp1_prover::worker::TaskContext {
            proof_id: ProofId::new(task.proof_id.clone()),
            parent_id: task.parent_id.clone().map(TaskId::new),
            parent_context: None,
            requester_id: RequesterId::new(task.requester.clone()),
        },
    }
}

/// Groth16/Plonk need Succinct's circuit artifacts on local disk; runners never download them at
/// run time (pods have no business fetching gigabytes per task). Say exactly what is missing.
fn check_circuit_artifacts(system: &str) -> Result<(), String> {
    if std::env::var("SP1_CIRCUIT_MODE").is_ok_and(|m| m == "dev") {
        return Ok(());
    }
    let dir = if system == "plonk" {
        sp1_prover::build::plonk_circuit_artifacts_dir()
    } else {
        sp1_prover::build::groth16_circuit_artifacts_dir()
    }
    .map_err(|e| format!("cannot locate the {system} circuit artifacts: {e}"))?;
    let installed = Path::new(&dir).is_dir() && std::fs::read_dir(&dir).map(|mut entries| entries.next().is_some()).unwrap_or(false);
    if installed {
        return Ok(());
    }
    let var = if system == "plonk" { "SP1_PLONK_CIRCUIT_PATH" } else { "SP1_GROTH16_CIRCUIT_PATH" };
    Err(format!(
        "{system} circuit artifacts (SP1 circuit version {}) are not installed at {}: proofjobs runners \
         do not download them at run time. An operator provides them by unpacking Succinct's \
         {}-{system}.tar.gz there (bake it into the runner image or mount a volume, and point {var} at \
         the parent directory); the runner also needs the gnark prover (a build with sp1's native-gnark \
         feature). SP1_CIRCUIT_MODE=dev builds throwaway test circuits whose proofs verify only against them.",
        sp1_prover::SP1_CIRCUIT_VERSION,
        dir.display(),
        sp1_prover::SP1_CIRCUIT_VERSION,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_circuits_are_explained() {
        std::env::set_var("SP1_PLONK_CIRCUIT_PATH", "/nonexistent/proofjobs-circuits");
        let err = check_circuit_artifacts("plonk").unwrap_err();
        assert!(err.contains("/nonexistent/proofjobs-circuits"), "{err}");
        assert!(err.contains("SP1_PLONK_CIRCUIT_PATH"), "{err}");
    }
}
