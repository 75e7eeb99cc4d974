//! The prover-network door: the part of Succinct's `network.ProverNetwork` and
//! `artifact.ArtifactStore` that sp1-sdk's prove flow calls, so unmodified sp1-sdk code proves on
//! this cluster by pointing NETWORK_RPC_URL here (docs/NETWORK_API_RESEARCH.md has the wire
//! facts). Callers are the addresses their signatures recover to; a RequestProof becomes a proof
//! like any other, through the same intake checks, quotas, stages and Jobs. `http.rs` serves the
//! presigned artifact URLs on the same listener.

pub mod http;
pub mod signature;
pub mod wire;

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use proofjobs_pipeline::{
    artifacts::ArtifactStore,
    ids,
    state::{NetworkRequest, NetworkUpload, ProofStatus},
};
use sp1_prover_types::{Artifact, ArtifactClient, ArtifactType};
use sp1_sdk::{HashableKey, SP1VerifyingKey};
use tonic::{Request, Response, Status};

use self::{
    proto::*,
    signature::{recover, show, Address},
};
use crate::{
    auth::ANONYMOUS,
    intake::{self, store_error},
    Intake,
};

/// An internal failure, told to an unauthenticated caller without its details (they go to the
/// log). INTERNAL is one of the codes the SDK retries.
fn internal(e: anyhow::Error) -> Status {
    tracing::error!("network API: {e:#}");
    Status::internal("internal error; the api's log has the cause")
}

pub mod proto {
    tonic::include_proto!("network");
}

pub mod artifact_proto {
    tonic::include_proto!("artifact");
}

/// How network callers are let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkAuth {
    /// Signatures are not required: a request whose signature recovers is its address's, any
    /// other is `anonymous`'s. Trusted networks only.
    None,
    /// The signature must recover; the address is the requester.
    Verify,
    /// The signature must recover to an address registered with `proofctl admin network allow`;
    /// the requester is the one it was registered for.
    Allowlist,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The URL clients reach this api at (their NETWORK_RPC_URL), without a trailing slash; the
    /// presigned artifact URLs are built on it.
    pub url: String,
    pub auth: NetworkAuth,
    /// How long an upload URL from CreateArtifact stays usable.
    pub upload_ttl: Duration,
}

/// The message CreateArtifact's signature covers: a constant, so it identifies but never expires.
const CREATE_ARTIFACT_MESSAGE: &[u8] = b"create_artifact";
/// ArtifactType values the SDK uploads: PROGRAM, STDIN, PRIVATE_STDIN.
pub const PROGRAM: i32 = 1;
pub const STDIN: i32 = 2;
pub const PRIVATE_STDIN: i32 = 7;
/// Upload URIs handed back to the client, echoed in program_uri / stdin_uri.
const URI_SCHEME: &str = "proofjobs://artifact/";

/// FulfillmentStatus and ExecutionStatus values (the SDK parses them with its auction enums).
mod status {
    pub const ASSIGNED: i32 = 2;
    pub const FULFILLED: i32 = 3;
    pub const UNFULFILLABLE: i32 = 4;
    pub const UNEXECUTED: i32 = 1;
    pub const EXECUTED: i32 = 2;
}

#[derive(Clone)]
pub struct NetworkApi {
    intake: Intake,
    settings: Arc<Settings>,
}

/// Who a signed request speaks for.
struct Signer {
    address: Option<Address>,
    owner: String,
}

impl NetworkApi {
    pub fn new(intake: Intake, settings: Settings) -> NetworkApi {
        NetworkApi { intake, settings: Arc::new(Settings { url: settings.url.trim_end_matches('/').to_string(), ..settings }) }
    }

    /// The URL clients reach this api at.
    pub fn url(&self) -> &str {
        &self.settings.url
    }

    fn store(&self) -> &ArtifactStore {
        &self.intake.store
    }

    async fn signer(&self, message: &[u8], signature: &[u8]) -> Result<Signer, Status> {
        let address = match (recover(message, signature), self.settings.auth) {
            (Ok(address), _) => address,
            (Err(_), NetworkAuth::None) => return Ok(Signer { address: None, owner: ANONYMOUS.into() }),
            (Err(why), _) => return Err(Status::unauthenticated(format!("the request's signature does not verify: {why}"))),
        };
        let owner = match self.settings.auth {
            NetworkAuth::Allowlist => self.intake.db.network_address_requester(&address).await.map_err(internal)?.ok_or_else(|| {
                Status::permission_denied(format!(
                    "address {} may not use this cluster: an operator allows it with `proofctl admin network allow {} --requester <name>`",
                    show(&address),
                    show(&address)
                ))
            })?,
            _ => show(&address),
        };
        Ok(Signer { address: Some(address), owner })
    }

    /// Take the signed body's nonce; a stale one is ABORTED, which the SDK answers by fetching a
    /// fresh nonce and signing again.
    async fn take_nonce(&self, signer: &Signer, nonce: u64) -> Result<(), Status> {
        let Some(address) = signer.address else { return Ok(()) };
        if !self.intake.db.use_network_nonce(&address, nonce).await.map_err(internal)? {
            let expected = self.intake.db.network_nonce(&address).await.map_err(internal)?;
            return Err(Status::aborted(format!(
                "nonce {nonce} is not the next one for {} (expected {expected}): fetch a new nonce",
                show(&address)
            )));
        }
        Ok(())
    }

    /// The upload a program_uri / stdin_uri names, if it is the signer's, of one of `kinds`, and uploaded.
    async fn upload_named(&self, what: &str, uri: &str, signer: &Signer, kinds: &[i32]) -> Result<NetworkUpload, Status> {
        let missing =
            || Status::failed_precondition(format!("{what} {uri:?} is not an artifact uploaded through this cluster's CreateArtifact"));
        let id = uri.strip_prefix(URI_SCHEME).ok_or_else(missing)?;
        let upload = self.intake.db.network_upload_of(id).await.map_err(internal)?.ok_or_else(missing)?;
        if upload.owner != signer.owner || !kinds.contains(&upload.kind) {
            return Err(missing());
        }
        if upload.uploaded_at.is_none() {
            return Err(Status::failed_precondition(format!("{what} {uri:?} was never uploaded (PUT to its presigned URL first)")));
        }
        Ok(upload)
    }

    fn proof_url(&self, token: &str) -> String {
        format!("{}/network/proofs/{token}", self.settings.url)
    }
}

#[tonic::async_trait]
impl artifact_proto::artifact_store_server::ArtifactStore for NetworkApi {
    async fn create_artifact(
        &self,
        request: Request<artifact_proto::CreateArtifactRequest>,
    ) -> Result<Response<artifact_proto::CreateArtifactResponse>, Status> {
        let request = request.into_inner();
        let signer = self.signer(CREATE_ARTIFACT_MESSAGE, &request.signature).await?;
        if ![PROGRAM, STDIN, PRIVATE_STDIN].contains(&request.artifact_type) {
            return Err(Status::invalid_argument(format!(
                "artifact type {} cannot be uploaded here: only PROGRAM(1), STDIN(2) and PRIVATE_STDIN(7)",
                request.artifact_type
            )));
        }
        let artifact = self.store().create_artifact().map_err(internal)?.0;
        let token = ids::new_secret();
        let ttl = chrono::Duration::from_std(self.settings.upload_ttl).unwrap_or(chrono::Duration::hours(1));
        let upload = NetworkUpload {
            token: token.clone(),
            artifact: artifact.clone(),
            kind: request.artifact_type,
            owner: signer.owner.clone(),
            expires_at: Utc::now() + ttl,
            uploaded_at: None,
            sha256: None,
        };
        // Claimed at once: no other requester can name this artifact through another API.
        self.intake.db.claim_artifacts(&signer.owner, std::slice::from_ref(&artifact)).await.map_err(internal)?;
        self.intake.db.insert_network_upload(&upload).await.map_err(internal)?;
        Ok(Response::new(artifact_proto::CreateArtifactResponse {
            artifact_uri: format!("{URI_SCHEME}{artifact}"),
            artifact_presigned_url: format!("{}/network/artifacts/{token}", self.settings.url),
        }))
    }
}

#[tonic::async_trait]
impl prover_network_server::ProverNetwork for NetworkApi {
    async fn get_nonce(&self, request: Request<GetNonceRequest>) -> Result<Response<GetNonceResponse>, Status> {
        let address = wire::address(&request.into_inner().address)?;
        let nonce = self.intake.db.network_nonce(&address).await.map_err(internal)?;
        Ok(Response::new(GetNonceResponse { nonce }))
    }

    async fn get_program(&self, request: Request<GetProgramRequest>) -> Result<Response<GetProgramResponse>, Status> {
        // Programs are registered per requester, and GetProgram carries no signature to say
        // whose: "not found" makes the SDK register its program (upload and CreateProgram) on
        // every prove, so one requester's registration is never another's program.
        let vk_hash = wire::bytes32("vk_hash", &request.into_inner().vk_hash)?;
        Err(Status::not_found(format!("program {} is registered per requester: CreateProgram registers it for you", show(&vk_hash))))
    }

    async fn create_program(&self, request: Request<SignedRequest>) -> Result<Response<CreateProgramResponse>, Status> {
        let request = request.into_inner();
        let signer = self.signer(&request.body, &request.signature).await?;
        let body = <CreateProgramRequestBody as prost::Message>::decode(&request.body[..])
            .map_err(|e| Status::invalid_argument(format!("CreateProgram body does not decode: {e}")))?;
        let vk_hash = wire::bytes32("vk_hash", &body.vk_hash)?;
        let vk: SP1VerifyingKey =
            bincode::deserialize(&body.vk).map_err(|e| Status::invalid_argument(format!("vk is not a bincode SP1VerifyingKey: {e}")))?;
        if vk.hash_bytes() != vk_hash {
            return Err(Status::invalid_argument(format!(
                "vk hashes to {}, not the vk_hash sent ({})",
                show(&vk.hash_bytes()),
                show(&vk_hash)
            )));
        }
        let upload = self.upload_named("program_uri", &body.program_uri, &signer, &[PROGRAM]).await?;
        self.take_nonce(&signer, body.nonce).await?;
        // Idempotent: racing proves of one program both succeed; the requester's latest upload counts.
        self.intake.db.insert_network_program(&vk_hash, &body.vk, &upload.artifact, &signer.owner).await.map_err(internal)?;
        tracing::info!(vk_hash = %show(&vk_hash), owner = %signer.owner, "network program registered");
        Ok(Response::new(CreateProgramResponse {
            tx_hash: signature::keccak256(&[&request.body]).to_vec(),
            body: Some(CreateProgramResponseBody {}),
        }))
    }

    async fn request_proof(&self, request: Request<SignedRequest>) -> Result<Response<RequestProofResponse>, Status> {
        let request = request.into_inner();
        let signer = self.signer(&request.body, &request.signature).await?;
        let body = wire::decode_request_body(&request.body)?;
        let common = &body.common;
        if common.version != wire::VERSION {
            return Err(Status::invalid_argument(format!(
                "the request is for circuit version {:?}; this cluster proves {:?} (sp1-sdk 6.10)",
                common.version,
                wire::VERSION
            )));
        }
        let mode = wire::mode(common.mode)?;
        let request_id = wire::request_id(&signer.address.unwrap_or_default(), &body);
        let answer = |row: &NetworkRequest| {
            Response::new(RequestProofResponse {
                tx_hash: row.request_id.clone(),
                body: Some(RequestProofResponseBody { request_id: row.request_id.clone() }),
            })
        };
        // A retry (a lost answer, a timeout) gets the request it already made.
        if let Some(row) = self.intake.db.network_request(&request_id).await.map_err(internal)? {
            return Ok(answer(&row));
        }
        // The stdin first: a signature that recovers to someone else fails on what it does not own.
        let stdin = self.upload_named("stdin_uri", &common.stdin_uri, &signer, &[STDIN, PRIVATE_STDIN]).await?;
        let vk_hash = wire::bytes32("vk_hash", &common.vk_hash)?;
        let program = self.intake.db.network_program(&vk_hash, &signer.owner).await.map_err(internal)?.ok_or_else(|| {
            Status::failed_precondition(format!("no program with vk hash {} is registered here (CreateProgram first)", show(&vk_hash)))
        })?;
        self.take_nonce(&signer, common.nonce).await?;
        // Each proof reads its own copy of the registered program, claimed by its requester, so
        // the sweep's retention of a proof's inputs never removes the registration's copy.
        let elf =
            self.store().download_raw(&Artifact(program.program_artifact.clone()), ArtifactType::Program).await.map_err(store_error)?;
        let program_artifact = self.store().create_artifact().map_err(internal)?.0;
        self.store().upload_raw(&Artifact(program_artifact.clone()), ArtifactType::Program, elf).await.map_err(store_error)?;
        self.intake.db.claim_artifacts(&signer.owner, std::slice::from_ref(&program_artifact)).await.map_err(internal)?;
        let unbounded = |v: u64| (v != 0 && v != u64::MAX).then_some(v);
        // Derived from the request id, never equal to it: the id shows in listings, logs and Job
        // names, and the request id is what the proof's status (and URL) is asked with.
        let hex_id = hex::encode(&signature::keccak256(&[b"proofjobs-network-proof", &request_id])[..16]);
        let submitted = intake::Request {
            proof_id: Some(format!("net_{hex_id}")),
            mode,
            deadline: Some(common.deadline),
            cycle_limit: unbounded(common.cycle_limit),
            idempotency_key: None,
            requester: signer.address.map(|a| a.to_vec()).unwrap_or_default(),
            owner: signer.owner.clone(),
            gas_limit: unbounded(common.gas_limit),
            scheduled_by: None,
            stdin_private: body.stdin_private,
            quote_id: None,
        };
        let (proof_id, _) = self.intake.create_for_network(submitted, program_artifact, stdin.artifact).await?;
        let row = NetworkRequest {
            request_id: request_id.to_vec(),
            proof_id: proof_id.clone(),
            owner: signer.owner.clone(),
            download_token: ids::new_secret(),
        };
        let row = self.intake.db.insert_network_request(&row).await.map_err(internal)?;
        tracing::info!(proof = %proof_id, owner = %signer.owner, "network proof requested");
        Ok(answer(&row))
    }

    async fn get_proof_request_status(
        &self,
        request: Request<GetProofRequestStatusRequest>,
    ) -> Result<Response<GetProofRequestStatusResponse>, Status> {
        let request_id = request.into_inner().request_id;
        let row = self.intake.db.network_request(&request_id).await.map_err(internal)?;
        let Some(row) = row else { return Err(Status::not_found(format!("no proof request {}", show(&request_id)))) };
        let proof = self.intake.db.get_proof(&row.proof_id).await.map_err(internal)?;
        let Some(proof) = proof else {
            return Err(Status::not_found(format!("proof {} of request {} is gone", row.proof_id, show(&request_id))));
        };
        let (fulfillment, execution, proof_uri) = match proof.status {
            ProofStatus::Completed => (status::FULFILLED, status::EXECUTED, Some(self.proof_url(&row.download_token))),
            ProofStatus::Failed | ProofStatus::Cancelled => (status::UNFULFILLABLE, status::UNEXECUTED, None),
            _ => (status::ASSIGNED, status::UNEXECUTED, None),
        };
        Ok(Response::new(GetProofRequestStatusResponse {
            fulfillment_status: fulfillment,
            execution_status: execution,
            request_tx_hash: row.request_id.clone(),
            // The proof's own deadline: the one asked for, within the requester's quota.
            deadline: proof.deadline.timestamp().max(0) as u64,
            fulfill_tx_hash: (fulfillment == status::FULFILLED).then(|| row.request_id.clone()),
            proof_uri,
            public_values_hash: None,
            proof_public_uri: None,
        }))
    }

    async fn get_proof_request_params(
        &self,
        _request: Request<GetProofRequestParamsRequest>,
    ) -> Result<Response<GetProofRequestParamsResponse>, Status> {
        // No auction here: zero addresses and prices, which the SDK copies into its signed body.
        Ok(Response::new(GetProofRequestParamsResponse {
            domain: Vec::new(),
            auctioneer: vec![0; 20],
            executor: vec![0; 20],
            verifier: vec![0; 20],
            max_price_per_pgu: "0".into(),
            base_fee: "0".into(),
            treasury: vec![0; 20],
            tick_size: 0,
            network_floor_price_per_pgu: "0".into(),
        }))
    }

    async fn get_provers_by_uptime(
        &self,
        _request: Request<GetProversByUptimeRequest>,
    ) -> Result<Response<GetProversByUptimeResponse>, Status> {
        // One prover (this cluster), no whitelist to choose from; empty also stops the SDK's
        // fallback from resubmitting a failed request elsewhere.
        Ok(Response::new(GetProversByUptimeResponse { provers: Vec::new() }))
    }

    async fn cancel_request(&self, request: Request<SignedRequest>) -> Result<Response<CancelRequestResponse>, Status> {
        let request = request.into_inner();
        let signer = self.signer(&request.body, &request.signature).await?;
        let body = <CancelRequestRequestBody as prost::Message>::decode(&request.body[..])
            .map_err(|e| Status::invalid_argument(format!("CancelRequest body does not decode: {e}")))?;
        let row = self.intake.db.network_request(&body.request_id).await.map_err(internal)?;
        let Some(row) = row.filter(|r| r.owner == signer.owner) else {
            return Err(Status::not_found(format!("no proof request {} of yours", show(&body.request_id))));
        };
        self.take_nonce(&signer, body.nonce).await?;
        self.intake.db.cancel_proof(&row.proof_id, "cancelled by its requester (network CancelRequest)").await.map_err(internal)?;
        Ok(Response::new(CancelRequestResponse { tx_hash: row.request_id, body: Some(CancelRequestResponseBody {}) }))
    }
}
