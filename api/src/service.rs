//! proofjobs' own gRPC API, `proofjobs.v1.ProverService`.

use std::{pin::Pin, time::Duration};

use futures::{Stream, StreamExt};
use proofjobs_pipeline::{
    artifacts,
    stage::Mode,
    state::{wait_for, CancelOutcome, Notifications, ProofRow, ProofStatus},
};
use sp1_prover::worker::ProofFromNetwork;
use sp1_prover_types::{Artifact, ArtifactClient, ArtifactType};
use sp1_sdk::SP1ProofWithPublicValues;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::Caller,
    downloads::{Offer, ProofDownloads},
    intake::{self, internal, store_error, Intake},
    proto::{self, prover_service_server::ProverService, submit_request::Part},
    quote,
};

const CHUNK: usize = 1 << 20;

#[derive(Clone)]
pub struct ProverApi {
    intake: Intake,
    notifications: Notifications,
    downloads: Option<ProofDownloads>,
}

impl ProverApi {
    /// Fails when the limits ask for proof download URLs the store cannot give.
    pub fn new(intake: Intake, notifications: Notifications) -> anyhow::Result<ProverApi> {
        let downloads = ProofDownloads::new(&intake.store, intake.limits.proof_urls)?;
        Ok(ProverApi { intake, notifications, downloads })
    }

    /// The proof, if `caller` may see it; another requester's proof is "not found", exactly like
    /// one that does not exist.
    async fn load(&self, id: &str, caller: &Caller) -> Result<ProofRow, Status> {
        match self.intake.db.get_proof(id).await.map_err(internal)? {
            Some(row) if caller.may_see(&row) => Ok(row),
            _ => Err(Status::not_found(format!("no proof with id {id:?}"))),
        }
    }

    /// A Submit-style upload: the header, then program and stdin chunks, each size checked as it
    /// grows so that an oversized upload is refused before it is held in memory.
    async fn read_upload(
        &self,
        mut stream: Streaming<proto::SubmitRequest>,
        caller: Caller,
    ) -> Result<(intake::Request, Vec<u8>, Vec<u8>), Status> {
        let header = match stream.next().await {
            Some(Ok(proto::SubmitRequest { part: Some(Part::Header(h)) })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("the first Submit message must be the header")),
        };
        let mode: Mode = header.mode.parse().map_err(Status::invalid_argument)?;
        self.intake.check_program_size(header.program_size as usize)?;
        self.intake.check_stdin_size(header.stdin_size as usize)?;
        let mut program = Vec::with_capacity(header.program_size.min(64 << 20) as usize);
        let mut stdin = Vec::with_capacity(header.stdin_size.min(64 << 20) as usize);
        while let Some(message) = stream.next().await {
            match message?.part {
                Some(Part::ProgramChunk(chunk)) => {
                    program.extend_from_slice(&chunk);
                    self.intake.check_program_size(program.len())?;
                }
                Some(Part::StdinChunk(chunk)) => {
                    stdin.extend_from_slice(&chunk);
                    self.intake.check_stdin_size(stdin.len())?;
                }
                Some(Part::Header(_)) => return Err(Status::invalid_argument("only one header per Submit")),
                None => {}
            }
        }
        let request = intake::Request {
            proof_id: None,
            mode,
            deadline: Some(header.deadline).filter(|d| *d > 0),
            cycle_limit: Some(header.cycle_limit).filter(|c| *c > 0),
            idempotency_key: Some(header.idempotency_key).filter(|k| !k.is_empty()),
            requester: Vec::new(),
            owner: caller.requester,
            gas_limit: None,
            scheduled_by: None,
            stdin_private: false,
            quote_id: Some(header.quote_id).filter(|q| !q.is_empty()),
        };
        Ok((request, program, stdin))
    }

    async fn describe(&self, row: &ProofRow) -> Result<proto::Proof, Status> {
        let progress = self.intake.db.stage_progress(&row.id).await.map_err(internal)?;
        let used = self.intake.db.proof_usage(&row.id).await.map_err(internal)?;
        let prices = self.intake.db.prices().await.map_err(internal)?;
        let usage = quote::usage_message(&used, used.estimated_cost_usd(&prices));
        // Every stage the mode goes through is listed, including those not reached yet.
        let stages = row
            .mode
            .stages()
            .iter()
            .map(|stage| {
                let p = progress.get(stage).cloned().unwrap_or_default();
                proto::StageProgress {
                    stage: stage.as_str().to_string(),
                    state: p.state().to_string(),
                    done: p.done as u64,
                    total: p.total as u64,
                    running: p.running as u64,
                }
            })
            .collect();
        Ok(proto::Proof {
            id: row.id.clone(),
            mode: row.mode.as_str().to_string(),
            status: row.status.as_str().to_string(),
            failure_cause: row.failure_cause.clone().unwrap_or_default(),
            cycles: row.cycles.unwrap_or(0) as u64,
            public_values: row.public_values.clone().unwrap_or_default(),
            stages,
            created_at: row.created_at.timestamp() as u64,
            finished_at: row.finished_at.map(|t| t.timestamp() as u64).unwrap_or(0),
            deadline: row.deadline.timestamp() as u64,
            waiting: row.waiting.clone().unwrap_or_default(),
            quote: match &row.quote_id {
                Some(id) => self.intake.db.get_quote(id).await.map_err(internal)?.map(|q| quote::check(&q, row, &usage)),
                None => None,
            },
            usage: Some(usage),
        })
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ProverService for ProverApi {
    async fn submit(&self, request: Request<Streaming<proto::SubmitRequest>>) -> Result<Response<proto::SubmitResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (request, program, stdin) = self.read_upload(request.into_inner(), caller).await?;
        let (proof_id, created) = self.intake.submit(request, program, stdin).await?;
        Ok(Response::new(proto::SubmitResponse { proof_id, created }))
    }

    async fn quote(&self, request: Request<Streaming<proto::SubmitRequest>>) -> Result<Response<proto::QuoteResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (request, program, stdin) = self.read_upload(request.into_inner(), caller).await?;
        if request.quote_id.is_some() || request.idempotency_key.is_some() {
            return Err(Status::invalid_argument(
                "a Quote takes neither quote_id nor idempotency_key (each quote executes the program anew)",
            ));
        }
        let mode = request.mode;
        Ok(Response::new(quote::quote(&self.intake, &self.notifications, mode, request, program, stdin).await?))
    }

    async fn get(&self, request: Request<proto::GetRequest>) -> Result<Response<proto::Proof>, Status> {
        let caller = Caller::of(&request)?;
        let row = self.load(&request.into_inner().proof_id, &caller).await?;
        Ok(Response::new(self.describe(&row).await?))
    }

    type WatchStream = BoxStream<proto::Proof>;

    async fn watch(&self, request: Request<proto::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().proof_id;
        self.load(&id, &caller).await?;
        let api = self.clone();
        let mut wake = self.notifications.subscribe();
        let stream = async_stream(move |tx| async move {
            let mut last: Option<proto::Proof> = None;
            loop {
                let row = match api.load(&id, &caller).await {
                    Ok(row) => row,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let current = match api.describe(&row).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if last.as_ref() != Some(&current) {
                    if tx.send(Ok(current.clone())).await.is_err() {
                        return;
                    }
                    last = Some(current);
                }
                if row.status.is_terminal() {
                    return;
                }
                wait_for(&mut wake, Some(&id), Duration::from_secs(2)).await;
            }
        });
        Ok(Response::new(stream))
    }

    async fn cancel(&self, request: Request<proto::CancelRequest>) -> Result<Response<proto::CancelResponse>, Status> {
        let caller = Caller::of(&request)?;
        let id = request.into_inner().proof_id;
        self.load(&id, &caller).await?;
        match self.intake.db.cancel_proof(&id, "cancelled by the client").await.map_err(internal)? {
            CancelOutcome::Cancelled => Ok(Response::new(proto::CancelResponse { status: "cancelled".into() })),
            CancelOutcome::AlreadyFinished(status) => {
                Err(Status::failed_precondition(format!("proof {id} already finished ({}); nothing to cancel", status.as_str())))
            }
            CancelOutcome::NotFound => Err(Status::not_found(format!("no proof with id {id:?}"))),
        }
    }

    async fn list(&self, request: Request<proto::ListRequest>) -> Result<Response<proto::ListResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let statuses = request
            .statuses
            .iter()
            .map(|s| s.parse::<ProofStatus>().map_err(|e| Status::invalid_argument(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let limit = if request.limit == 0 { 100 } else { request.limit.min(1000) };
        let rows =
            self.intake.db.list_proofs(&statuses, caller.owner_filter(), limit as i64, request.offset as i64).await.map_err(internal)?;
        let mut proofs = Vec::with_capacity(rows.len());
        for row in &rows {
            proofs.push(self.describe(row).await?);
        }
        Ok(Response::new(proto::ListResponse { proofs }))
    }

    type GetProofStream = BoxStream<proto::ProofChunk>;

    async fn get_proof(&self, request: Request<proto::GetProofRequest>) -> Result<Response<Self::GetProofStream>, Status> {
        let caller = Caller::of(&request)?;
        let proto::GetProofRequest { proof_id: id, accept_url } = request.into_inner();
        let row = self.load(&id, &caller).await?;
        if row.mode == Mode::Execute {
            return Err(Status::failed_precondition(format!(
                "proof {id} was an execute-only request: it has cycles and public values (see Get) but no proof"
            )));
        }
        if row.status != ProofStatus::Completed {
            let cause = row.failure_cause.map(|c| format!(": {c}")).unwrap_or_default();
            return Err(Status::failed_precondition(format!("proof {id} is {}{cause}", row.status.as_str())));
        }
        let lost = || {
            Status::data_loss(format!(
                "proof {id} completed, but its proof artifact {} is gone from the artifact store {} (past the proof retention, or the store lost it)",
                row.proof_artifact,
                self.intake.store.describe()
            ))
        };
        let downloads = self.downloads.as_ref().filter(|_| accept_url);
        let artifact = Artifact(row.proof_artifact.clone());
        if let Some(downloads) = downloads {
            // A URL only while the proof itself is still kept: past its retention, the object
            // the bucket has not removed yet is not served either.
            if !self.intake.store.exists(&artifact, ArtifactType::Proof).await.map_err(store_error)? {
                return Err(lost());
            }
            match downloads.existing(&id).await {
                Ok(Some(offer)) => return Ok(url_response(offer)),
                Ok(None) => {}
                // The proof is still there to stream.
                Err(e) => tracing::warn!(proof = %id, "looking up the download of a proof failed: {e:#}"),
            }
        }
        let proof: ProofFromNetwork =
            self.intake.store.download(&artifact).await.map_err(|e| if artifacts::is_not_found(&e) { lost() } else { store_error(e) })?;
        let bytes = bincode::serialize(&SP1ProofWithPublicValues {
            proof: proof.proof,
            public_values: proof.public_values,
            sp1_version: proof.sp1_version,
            tee_proof: None,
        })
        .map_err(|e| internal(e.into()))?;
        let bytes = bytes::Bytes::from(bytes);
        if let Some(downloads) = downloads {
            match downloads.publish(&id, bytes.clone()).await {
                Ok(Some(offer)) => return Ok(url_response(offer)),
                Ok(None) => {}
                // The client still gets its proof, the slow way.
                Err(e) => tracing::warn!(proof = %id, "offering a download URL failed, streaming the proof instead: {e:#}"),
            }
        }
        let chunks: Vec<Result<proto::ProofChunk, Status>> =
            bytes.chunks(CHUNK).map(|c| Ok(proto::ProofChunk { data: c.to_vec(), ..Default::default() })).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

/// A GetProof answer that carries a download URL instead of the bytes.
fn url_response(offer: Offer) -> Response<BoxStream<proto::ProofChunk>> {
    let chunk = proto::ProofChunk { data: Vec::new(), download_url: offer.url, url_expires_at: offer.expires_at, size: offer.size };
    Response::new(Box::pin(futures::stream::iter([Ok(chunk)])))
}

/// A server stream fed by a spawned task.
fn async_stream<T, F, Fut>(body: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
