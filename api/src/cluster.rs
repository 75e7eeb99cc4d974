//! sp1-cluster's `cluster.ClusterService` over proofjobs' state, so its clients (CLI, gateway,
//! fulfiller) work unchanged: they upload program and stdin to the artifact store in sp1-cluster's
//! layout, create a request naming those artifacts, and poll it.

use chrono::DateTime;
use proofjobs_pipeline::{
    stage::Mode,
    state::{CancelOutcome, ProofRow, ProofStatus},
};
use sp1_prover_types::cluster::{
    cluster_service_server::ClusterService, ClusterComponentManifest, ExecutionResult, ExecutionStatus, ProofRequest,
    ProofRequestCancelRequest, ProofRequestCreateRequest, ProofRequestGetRequest, ProofRequestGetResponse, ProofRequestListRequest,
    ProofRequestListResponse, ProofRequestStatus, ProofRequestUpdateRequest, SetClusterComponentInfoRequest,
};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::{
    auth::Caller,
    intake::{self, internal, Intake},
};

pub struct ClusterApi {
    intake: Intake,
    manifest: Mutex<ClusterComponentManifest>,
}

impl ClusterApi {
    pub fn new(intake: Intake) -> ClusterApi {
        ClusterApi { intake, manifest: Mutex::new(ClusterComponentManifest::default()) }
    }

    /// The proof request, if `caller` may see it (another requester's is "not found").
    async fn visible(&self, id: &str, caller: &Caller) -> Result<Option<ProofRow>, Status> {
        Ok(self.intake.db.get_proof(id).await.map_err(internal)?.filter(|row| caller.may_see(row)))
    }
}

fn admin_only(caller: &Caller, what: &str) -> Result<(), Status> {
    if caller.admin {
        Ok(())
    } else {
        Err(Status::permission_denied(format!("{what} needs an admin key")))
    }
}

fn cluster_status(status: ProofStatus) -> ProofRequestStatus {
    match status {
        ProofStatus::Pending | ProofStatus::Running => ProofRequestStatus::Pending,
        ProofStatus::Completed => ProofRequestStatus::Completed,
        ProofStatus::Failed => ProofRequestStatus::Failed,
        ProofStatus::Cancelled => ProofRequestStatus::Cancelled,
    }
}

fn to_cluster(row: &ProofRow) -> ProofRequest {
    let execution_status = match (row.status, row.cycles) {
        (_, Some(_)) => ExecutionStatus::Executed,
        (ProofStatus::Failed, None) => ExecutionStatus::Failed,
        (ProofStatus::Cancelled, None) => ExecutionStatus::Cancelled,
        _ => ExecutionStatus::Unexecuted,
    };
    let public_values_hash = row.public_values.as_ref().map(|pv| sp1_sdk::SP1PublicValues::from(pv.as_slice()).hash()).unwrap_or_default();
    let extra_data = row
        .extra_data
        .clone()
        .or_else(|| row.failure_cause.as_ref().map(|cause| serde_json::json!({ "proving_failure": { "reason": cause } }).to_string()));
    ProofRequest {
        id: row.id.clone(),
        proof_status: cluster_status(row.status) as i32,
        requester: row.requester.clone(),
        execution_result: Some(ExecutionResult {
            status: execution_status as i32,
            failure_cause: 0,
            cycles: row.cycles.unwrap_or(0) as u64,
            gas: 0,
            public_values_hash,
        }),
        stdin_artifact_id: row.stdin_artifact.clone(),
        program_artifact_id: row.program_artifact.clone(),
        proof_artifact_id: Some(row.proof_artifact.clone()),
        options_artifact_id: row.mode.sp1_mode().map(|m| m.to_string()),
        cycle_limit: row.cycle_limit.map(|c| c as u64),
        gas_limit: row.gas_limit.map(|g| g as u64),
        deadline: row.deadline.timestamp() as u64,
        handled: row.handled,
        metadata: row.metadata.clone(),
        created_at: row.created_at.timestamp() as u64,
        updated_at: row.updated_at.timestamp() as u64,
        extra_data,
        scheduled_by: row.scheduled_by.clone(),
        stdin_private: row.stdin_private,
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn proof_request_create(&self, request: Request<ProofRequestCreateRequest>) -> Result<Response<()>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        if r.proof_id.is_empty() {
            return Err(Status::invalid_argument("proof_id is required"));
        }
        // sp1-cluster carries the proof mode as a decimal ProofMode number in options_artifact_id.
        let mode = match r.options_artifact_id.as_deref() {
            None | Some("") => Mode::Compressed,
            Some(s) => s.parse::<i32>().ok().and_then(Mode::from_sp1_mode).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "unknown proof mode {s:?} in options_artifact_id (expected 1=core, 2=compressed, 3=plonk, 4=groth16)"
                ))
            })?,
        };
        let request = intake::Request {
            proof_id: Some(r.proof_id.clone()),
            mode,
            deadline: Some(r.deadline).filter(|d| *d > 0),
            cycle_limit: Some(r.cycle_limit).filter(|c| *c > 0),
            idempotency_key: None,
            requester: r.requester,
            owner: caller.requester,
            gas_limit: Some(r.gas_limit),
            scheduled_by: r.scheduled_by,
            stdin_private: r.stdin_private,
            quote_id: None,
        };
        let (_, created) =
            self.intake.create_for_artifacts(request, r.program_artifact_id, r.stdin_artifact_id, r.proof_artifact_id).await?;
        if !created {
            return Err(Status::already_exists(format!("proof request {} already exists", r.proof_id)));
        }
        Ok(Response::new(()))
    }

    async fn proof_request_cancel(&self, request: Request<ProofRequestCancelRequest>) -> Result<Response<()>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().proof_id;
        if self.visible(&id, &caller).await?.is_none() {
            return Err(Status::not_found(format!("no proof request with id {id:?}")));
        }
        match self.intake.db.cancel_proof(&id, "cancelled by the client").await.map_err(internal)? {
            // sp1-cluster's cancel is idempotent on finished requests.
            CancelOutcome::Cancelled | CancelOutcome::AlreadyFinished(_) => Ok(Response::new(())),
            CancelOutcome::NotFound => Err(Status::not_found(format!("no proof request with id {id:?}"))),
        }
    }

    async fn proof_request_update(&self, request: Request<ProofRequestUpdateRequest>) -> Result<Response<()>, Status> {
        // It can mark any proof completed: an operator's tool, not a client's.
        admin_only(&Caller::of(&request)?, "ProofRequestUpdate")?;
        let r = request.into_inner();
        let db = &self.intake.db;
        if db.get_proof(&r.proof_id).await.map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("no proof request with id {:?}", r.proof_id)));
        }
        if let Some(status) = r.proof_status {
            let status = match ProofRequestStatus::try_from(status) {
                Ok(ProofRequestStatus::Completed) => Some(ProofStatus::Completed),
                Ok(ProofRequestStatus::Failed) => Some(ProofStatus::Failed),
                Ok(ProofRequestStatus::Cancelled) => Some(ProofStatus::Cancelled),
                Ok(ProofRequestStatus::Pending) => None,
                _ => return Err(Status::invalid_argument(format!("unknown proof status {status}"))),
            };
            if let Some(status) = status {
                db.finish_proof(&r.proof_id, status, Some("set by ProofRequestUpdate"), None, None).await.map_err(internal)?;
            }
        }
        let deadline = r.deadline.and_then(|d| DateTime::from_timestamp(d as i64, 0));
        db.update_cluster_fields(&r.proof_id, r.handled, r.metadata.as_deref(), r.extra_data.as_deref(), deadline)
            .await
            .map_err(internal)?;
        Ok(Response::new(()))
    }

    async fn proof_request_get(&self, request: Request<ProofRequestGetRequest>) -> Result<Response<ProofRequestGetResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().proof_id;
        let row = self.visible(&id, &caller).await?;
        // sp1-cluster answers an unknown id with an empty response, not an error.
        Ok(Response::new(ProofRequestGetResponse { proof_request: row.as_ref().map(to_cluster) }))
    }

    async fn proof_request_list(&self, request: Request<ProofRequestListRequest>) -> Result<Response<ProofRequestListResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let limit = r.limit.unwrap_or(100).min(1000) as i64;
        let offset = r.offset.unwrap_or(0) as i64;
        let rows = self.intake.db.list_proofs(&[], caller.owner_filter(), 100_000, 0).await.map_err(internal)?;
        let wanted: Vec<i32> = r.proof_status.clone();
        let proofs: Vec<ProofRequest> = rows
            .iter()
            .map(to_cluster)
            .filter(|p| wanted.is_empty() || wanted.contains(&p.proof_status))
            .filter(|p| r.handled.is_none_or(|h| p.handled == h))
            .filter(|p| r.minimum_deadline.is_none_or(|d| p.deadline >= d))
            .filter(|p| r.scheduled_by.is_none() || p.scheduled_by == r.scheduled_by)
            .filter(|p| {
                r.execution_status.is_empty() || p.execution_result.as_ref().is_some_and(|e| r.execution_status.contains(&e.status))
            })
            .skip(offset as usize)
            .take(limit as usize)
            .collect();
        Ok(Response::new(ProofRequestListResponse { proof_requests: proofs }))
    }

    async fn set_cluster_component_info(&self, request: Request<SetClusterComponentInfoRequest>) -> Result<Response<()>, Status> {
        admin_only(&Caller::of(&request)?, "SetClusterComponentInfo")?;
        let r = request.into_inner();
        let mut manifest = self.manifest.lock().await;
        manifest.components = r.components;
        manifest.capacity = r.capacity;
        manifest.updated_at = chrono::Utc::now().timestamp() as u64;
        Ok(Response::new(()))
    }

    async fn get_cluster_component_info(&self, _request: Request<()>) -> Result<Response<ClusterComponentManifest>, Status> {
        Ok(Response::new(self.manifest.lock().await.clone()))
    }

    async fn healthcheck(&self, _request: Request<()>) -> Result<Response<()>, Status> {
        self.intake.db.ping().await.map_err(|e| Status::unavailable(format!("{e:#}")))?;
        Ok(Response::new(()))
    }
}
