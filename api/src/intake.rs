//! Taking in a proof request: every check that protects the cluster from bad input happens here,
//! before anything is stored, with a precise gRPC status. Both services submit through this one
//! path, so a request is validated the same way whichever API it came from.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use proofjobs_pipeline::{
    artifacts::{self, ArtifactStore},
    ids,
    stage::{Mode, Stage},
    state::{Db, InsertOutcome, NewProof, NewTask, Quota},
};
use sp1_prover_types::{Artifact, ArtifactClient, ArtifactType, TaskType};
use sp1_sdk::SP1Stdin;
use tonic::Status;

use crate::program_check::validate_program;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_program_bytes: usize,
    /// Memory a program's loadable segments may claim (see `program_check.rs`).
    pub max_program_memory: u64,
    pub max_stdin_bytes: usize,
    pub default_deadline: std::time::Duration,
    pub quotes: crate::quote::Settings,
    /// Large proofs offered as presigned download URLs (see `downloads.rs`); None: always streamed.
    pub proof_urls: Option<crate::downloads::Settings>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_program_bytes: 256 << 20,
            max_program_memory: crate::program_check::DEFAULT_MAX_PROGRAM_MEMORY,
            max_stdin_bytes: 1 << 30,
            default_deadline: std::time::Duration::from_secs(4 * 3600),
            quotes: crate::quote::Settings::default(),
            proof_urls: None,
        }
    }
}

/// What a client asks for, apart from the program and stdin themselves.
#[derive(Debug, Clone)]
pub struct Request {
    pub proof_id: Option<String>,
    pub mode: Mode,
    /// Unix seconds; None = the default deadline.
    pub deadline: Option<u64>,
    pub cycle_limit: Option<u64>,
    pub idempotency_key: Option<String>,
    pub requester: Vec<u8>,
    /// The authenticated caller the proof will belong to.
    pub owner: String,
    pub gas_limit: Option<u64>,
    pub scheduled_by: Option<String>,
    pub stdin_private: bool,
    /// The caller's quote this proof follows (see `quote.rs`).
    pub quote_id: Option<String>,
}

#[derive(Clone)]
pub struct Intake {
    pub db: Db,
    pub store: ArtifactStore,
    pub limits: Limits,
}

impl Intake {
    pub fn new(db: Db, store: ArtifactStore, limits: Limits) -> Intake {
        Intake { db, store, limits }
    }

    pub fn check_stdin_size(&self, size: usize) -> Result<(), Status> {
        if size > self.limits.max_stdin_bytes {
            return Err(Status::resource_exhausted(format!(
                "stdin is {size} bytes, over this server's limit of {} bytes",
                self.limits.max_stdin_bytes
            )));
        }
        Ok(())
    }

    pub fn check_program_size(&self, size: usize) -> Result<(), Status> {
        if size > self.limits.max_program_bytes {
            return Err(Status::resource_exhausted(format!(
                "program is {size} bytes, over this server's limit of {} bytes",
                self.limits.max_program_bytes
            )));
        }
        Ok(())
    }

    /// The requester's quota, read before anything is stored.
    async fn quota(&self, owner: &str) -> Result<Quota, Status> {
        self.db.quota_of(owner).await.map_err(internal)
    }

    /// A quote named by a submission must be the caller's own (another's is "not found", like one
    /// that does not exist) and for the mode asked for.
    async fn check_quote(&self, request: &Request) -> Result<(), Status> {
        let Some(id) = &request.quote_id else { return Ok(()) };
        match self.db.get_quote(id).await.map_err(internal)? {
            Some(quote) if quote.owner == request.owner => {
                if quote.mode != request.mode {
                    return Err(Status::invalid_argument(format!(
                        "quote {id} is for a {} proof, not {}",
                        quote.mode.as_str(),
                        request.mode.as_str()
                    )));
                }
                Ok(())
            }
            _ => Err(Status::not_found(format!("no quote with id {id:?}"))),
        }
    }

    /// The proof's deadline: the requested one, or the server's default; within the requester's
    /// longest allowed deadline either way (a default beyond it is shortened to it).
    fn deadline(&self, requested: Option<u64>, quota: &Quota, owner: &str) -> Result<DateTime<Utc>, Status> {
        let now = Utc::now();
        let longest = quota.max_deadline_secs.map(|secs| now + ChronoDuration::seconds(secs.min(i64::MAX as u64 / 1000) as i64));
        match requested {
            None | Some(0) => {
                let default = now + ChronoDuration::from_std(self.limits.default_deadline).unwrap();
                Ok(longest.map_or(default, |l| default.min(l)))
            }
            Some(secs) if longest.is_some_and(|l| secs as i64 > l.timestamp()) => Err(Status::invalid_argument(format!(
                "deadline {secs} is {} s away, over the longest requester {owner:?} may ask for ({} s; proofctl admin quota)",
                (secs as i64).saturating_sub(now.timestamp()),
                quota.max_deadline_secs.unwrap_or_default()
            ))),
            Some(secs) => {
                let at = DateTime::<Utc>::from_timestamp(secs as i64, 0)
                    .ok_or_else(|| Status::invalid_argument(format!("deadline {secs} is not a valid unix time")))?;
                if at <= now {
                    return Err(Status::invalid_argument(format!(
                        "deadline {} is already past (now {})",
                        at.to_rfc3339(),
                        now.to_rfc3339()
                    )));
                }
                Ok(at)
            }
        }
    }

    /// Validate and store program + stdin uploaded with the request, then create the proof.
    pub async fn submit(&self, request: Request, program: Vec<u8>, stdin: Vec<u8>) -> Result<(String, bool), Status> {
        if program.is_empty() {
            return Err(Status::invalid_argument("program is empty: send the ELF bytes in program chunks"));
        }
        self.check_program_size(program.len())?;
        self.check_stdin_size(stdin.len())?;
        let quota = self.quota(&request.owner).await?;
        let deadline = self.deadline(request.deadline, &quota, &request.owner)?;
        let cycle_limit = cycle_limit(request.cycle_limit, &quota, &request.owner)?;
        self.check_quote(&request).await?;
        let program = validate_program(program, self.limits.max_program_memory).await?;
        validate_stdin(&stdin)?;
        if let Some(key) = &request.idempotency_key {
            if let Some(existing) = self.existing_for_key(&request.owner, key).await? {
                return Ok((existing, false));
            }
        }
        let program_artifact = self.store.create_artifact().map_err(internal)?;
        let stdin_artifact = self.store.create_artifact().map_err(internal)?;
        // Stored as the SP1 worker reads them: the ELF as a bincode Vec<u8>, stdin as sent.
        self.store.upload_program(&program_artifact, program).await.map_err(store_error)?;
        self.store.upload_raw(&stdin_artifact, ArtifactType::Stdin, stdin).await.map_err(store_error)?;
        let proof_artifact = self.store.create_artifact().map_err(internal)?;
        // Fresh ids, claimed at once, so that no request of another requester can name them.
        let ids = [program_artifact.0.clone(), stdin_artifact.0.clone(), proof_artifact.0.clone()];
        let foreign = self.db.claim_artifacts(&request.owner, &ids).await.map_err(internal)?;
        if !foreign.is_empty() {
            return Err(Status::internal(format!("fresh artifact ids {foreign:?} were already claimed")));
        }
        self.create(Request { cycle_limit, ..request }, deadline, program_artifact.0, stdin_artifact.0, proof_artifact.0).await
    }

    /// sp1-cluster's path: the client uploaded program and stdin to the store itself.
    pub async fn create_for_artifacts(
        &self,
        request: Request,
        program_artifact: String,
        stdin_artifact: String,
        proof_artifact: Option<String>,
    ) -> Result<(String, bool), Status> {
        let quota = self.quota(&request.owner).await?;
        let deadline = self.deadline(request.deadline, &quota, &request.owner)?;
        let cycle_limit = cycle_limit(request.cycle_limit, &quota, &request.owner)?;
        let request = Request { cycle_limit, ..request };
        // A retried request (same id) is answered as before, whatever else it names.
        if let Some(id) = &request.proof_id {
            if self.db.get_proof(id).await.map_err(internal)?.is_some() {
                return Ok((id.clone(), false));
            }
        }
        let inputs = [("program", &program_artifact, ArtifactType::Program), ("stdin", &stdin_artifact, ArtifactType::Stdin)];
        for (what, id, _) in &inputs {
            check_artifact_id(what, id)?;
        }
        // Another requester's artifact is reported exactly as a missing one.
        let absent = |what: &str, id: &str| Status::not_found(format!("{what} artifact {id} is not in the artifact store"));
        let foreign =
            self.db.claim_artifacts(&request.owner, &[program_artifact.clone(), stdin_artifact.clone()]).await.map_err(internal)?;
        if let Some((what, id, _)) = inputs.iter().find(|(_, id, _)| foreign.contains(id)) {
            return Err(absent(what, id));
        }
        for (what, id, kind) in inputs {
            let present = self.store.exists(&Artifact(id.clone()), kind).await.map_err(store_error)?;
            if !present {
                return Err(absent(what, id));
            }
        }
        // Decoded with a cap: a small stored value may claim to expand without bound.
        let limit = self.limits.max_program_bytes + 8;
        let stored = self.store.download_limited(&program_artifact, limit).await.map_err(|e| {
            if artifacts::is_too_large(&e) {
                Status::resource_exhausted(format!(
                    "program artifact {program_artifact} decodes to more than {limit} bytes, over this server's limit of {} bytes for a program",
                    self.limits.max_program_bytes
                ))
            } else if artifacts::is_transient(&e) {
                store_error(e)
            } else {
                Status::invalid_argument(format!("program artifact {program_artifact} is not a bincode-serialized ELF: {e:#}"))
            }
        })?;
        let program: Vec<u8> = bincode::deserialize(&stored)
            .map_err(|e| Status::invalid_argument(format!("program artifact {program_artifact} is not a bincode-serialized ELF: {e}")))?;
        drop(stored);
        validate_program(program, self.limits.max_program_memory).await?;
        let proof_artifact = match proof_artifact {
            Some(id) if !id.is_empty() => {
                check_artifact_id("proof", &id)?;
                // Never overwrite data that exists or that another request will write.
                let in_use = self.store.exists(&Artifact(id.clone()), ArtifactType::Proof).await.map_err(store_error)?
                    || !self.db.claim_artifacts(&request.owner, std::slice::from_ref(&id)).await.map_err(internal)?.is_empty();
                if in_use {
                    return Err(Status::failed_precondition(format!(
                        "proof artifact id {id} is already in use; name a fresh one, or none to have one made"
                    )));
                }
                id
            }
            _ => {
                let id = self.store.create_artifact().map_err(internal)?.0;
                self.db.claim_artifacts(&request.owner, std::slice::from_ref(&id)).await.map_err(internal)?;
                id
            }
        };
        self.create(request, deadline, program_artifact, stdin_artifact, proof_artifact).await
    }

    /// The prover-network path (`network/`): program and stdin are stored, validated and claimed
    /// for the owner already; the request's id is chosen by the caller, so a retry finds its proof.
    /// The SDK asks for a deadline on its own (4 h by default), so one past the requester's
    /// longest is shortened to it rather than refused.
    pub async fn create_for_network(
        &self,
        request: Request,
        program_artifact: String,
        stdin_artifact: String,
    ) -> Result<(String, bool), Status> {
        let quota = self.quota(&request.owner).await?;
        let longest = quota.max_deadline_secs.map(|secs| (Utc::now().timestamp().max(0) as u64).saturating_add(secs));
        let requested = match (request.deadline, longest) {
            (Some(asked), Some(longest)) if asked > longest => Some(longest),
            (asked, _) => asked,
        };
        let deadline = self.deadline(requested, &quota, &request.owner)?;
        let cycle_limit = cycle_limit(request.cycle_limit, &quota, &request.owner)?;
        let proof_artifact = self.store.create_artifact().map_err(internal)?.0;
        self.db.claim_artifacts(&request.owner, std::slice::from_ref(&proof_artifact)).await.map_err(internal)?;
        self.create(Request { cycle_limit, ..request }, deadline, program_artifact, stdin_artifact, proof_artifact).await
    }

    async fn existing_for_key(&self, owner: &str, key: &str) -> Result<Option<String>, Status> {
        self.db.proof_for_idempotency_key(owner, key).await.map_err(internal)
    }

    async fn create(
        &self,
        request: Request,
        deadline: DateTime<Utc>,
        program_artifact: String,
        stdin_artifact: String,
        proof_artifact: String,
    ) -> Result<(String, bool), Status> {
        let proof_id = match request.proof_id {
            Some(id) => {
                ids::validate_client_proof_id(&id).map_err(Status::invalid_argument)?;
                id
            }
            None => ids::new_proof_id(),
        };
        let cycle_limit = request.cycle_limit.filter(|c| *c > 0);
        let first_task = first_task(request.mode, &program_artifact, &stdin_artifact, &proof_artifact, cycle_limit, request.stdin_private);
        let proof = NewProof {
            id: proof_id.clone(),
            mode: request.mode,
            program_artifact,
            stdin_artifact,
            proof_artifact,
            cycle_limit: cycle_limit.map(|c| c as i64),
            deadline,
            idempotency_key: request.idempotency_key,
            requester: request.requester,
            owner: request.owner,
            gas_limit: request.gas_limit.filter(|g| *g > 0).map(|g| g as i64),
            scheduled_by: request.scheduled_by,
            stdin_private: request.stdin_private,
            quote_id: request.quote_id,
        };
        match self.db.insert_proof(&proof, &first_task).await.map_err(internal)? {
            InsertOutcome::Created => {
                tracing::info!(proof = %proof_id, mode = %request.mode, "proof submitted");
                Ok((proof_id, true))
            }
            InsertOutcome::Existing(id) => Ok((id, false)),
        }
    }
}

/// Longest artifact id a client may name.
const MAX_ARTIFACT_ID: usize = 256;

/// A client-named artifact id must be a plain name: its S3 object is `<prefix><id>`, so a `/`
/// could reach objects that are not artifacts (proof downloads live under `<prefix>downloads/`).
fn check_artifact_id(what: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("{what} artifact id is empty")));
    }
    if id.len() > MAX_ARTIFACT_ID || id.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return Err(Status::invalid_argument(format!(
            "{what} artifact id {:?} is not a plain name: at most {MAX_ARTIFACT_ID} bytes, no '/', '\\' or control characters",
            id.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

/// The cycle limit a proof runs under: the requested one within the requester's maximum, or
/// that maximum when the request names none (0 or absent).
fn cycle_limit(requested: Option<u64>, quota: &Quota, owner: &str) -> Result<Option<u64>, Status> {
    match (requested.filter(|c| *c > 0), quota.max_cycles) {
        (Some(asked), Some(max)) if asked > max => Err(Status::invalid_argument(format!(
            "cycle limit {asked} is over the most requester {owner:?} may ask for ({max}; proofctl admin quota)"
        ))),
        (Some(asked), _) => Ok(Some(asked)),
        (None, max) => Ok(max),
    }
}

/// The task that starts a proof: the SP1 controller, or a plain execution for execute mode.
fn first_task(mode: Mode, program: &str, stdin: &str, output: &str, cycle_limit: Option<u64>, stdin_private: bool) -> NewTask {
    let limit = cycle_limit.map(|c| c.to_string()).unwrap_or_default();
    let (task_type, inputs) = match mode.sp1_mode() {
        None => (TaskType::ExecuteOnly, vec![program.to_string(), stdin.to_string(), limit]),
        Some(sp1_mode) => (
            TaskType::Controller,
            vec![
                program.to_string(),
                stdin.to_string(),
                sp1_mode.to_string(),
                limit,
                String::new(),
                serde_json::json!({ "stdin_private": stdin_private }).to_string(),
            ],
        ),
    };
    NewTask {
        id: ids::new_task_id(),
        task_type: task_type as i32,
        stage: Stage::of_task(task_type),
        inputs,
        outputs: vec![output.to_string()],
        parent_id: None,
        requester: String::new(),
    }
}

pub fn validate_stdin(stdin: &[u8]) -> Result<(), Status> {
    bincode::deserialize::<SP1Stdin>(stdin)
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(format!("stdin is not a bincode-serialized SP1Stdin: {e}")))
}

pub fn internal(e: anyhow::Error) -> Status {
    tracing::error!("internal error: {e:#}");
    Status::internal(format!("{e:#}"))
}

pub fn store_error(e: anyhow::Error) -> Status {
    if proofjobs_pipeline::artifacts::is_transient(&e) {
        Status::unavailable(format!("artifact store unavailable: {e:#}"))
    } else {
        internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requesters_cycle_maximum_caps_and_fills_in_the_limit() {
        let capped = Quota { max_cycles: Some(1_000), ..Default::default() };
        assert_eq!(cycle_limit(Some(500), &capped, "a").unwrap(), Some(500));
        assert_eq!(cycle_limit(None, &capped, "a").unwrap(), Some(1_000));
        assert_eq!(cycle_limit(Some(0), &capped, "a").unwrap(), Some(1_000), "0 means none asked");
        let refused = cycle_limit(Some(1_001), &capped, "a").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("1000"), "{}", refused.message());
        assert_eq!(cycle_limit(None, &Quota::default(), "a").unwrap(), None);
    }

    #[test]
    fn client_named_artifact_ids_are_plain_names() {
        for ok in ["artifact_01jx8r3k2m", "a", &"x".repeat(MAX_ARTIFACT_ID), "proof-1.bin:v2"] {
            check_artifact_id("proof", ok).unwrap();
        }
        for bad in ["", "downloads/proof_1.bin", "..\\x", "a\nb", &"x".repeat(MAX_ARTIFACT_ID + 1)] {
            let refused = check_artifact_id("proof", bad).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(refused.message().starts_with("proof artifact id"), "{}", refused.message());
        }
    }
}
