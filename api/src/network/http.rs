//! The URLs CreateArtifact and GetProofRequestStatus hand out, served on the api's own listener:
//! PUT of a program or stdin (zstd-compressed bincode, as sp1-sdk uploads them) and GET of a
//! finished proof (plain bincode, as sp1-sdk reads it). Each URL carries an unguessable token
//! that names one upload grant or one request; an upload URL takes one body before it expires (a
//! repeat of that body is answered OK, for clients whose reply was lost), and what is uploaded is
//! checked exactly as the other APIs check it before it is stored. Uploads are read under a
//! semaphore, each capped at its kind's limit, so memory stays bounded however many arrive.

use std::{io::Read, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Path, State},
    http::StatusCode,
    routing::{get, put},
    Router,
};
use chrono::Utc;
use proofjobs_pipeline::state::{NetworkUpload, ProofStatus, UploadTake};
use sha2::{Digest, Sha256};
use sp1_prover::worker::ProofFromNetwork;
use sp1_prover_types::{Artifact, ArtifactClient, ArtifactType};
use tokio::sync::Semaphore;
use tonic::{Code, Status};

use super::{NetworkApi, PROGRAM};
use crate::{intake::validate_stdin, program_check::validate_program};

type Reply = (StatusCode, Vec<u8>);

/// Uploads read and checked at once; more wait their turn.
const CONCURRENT_UPLOADS: usize = 2;

#[derive(Clone)]
struct Uploads {
    api: NetworkApi,
    permits: Arc<Semaphore>,
}

/// The routes, for the api's router.
pub fn routes(api: NetworkApi) -> Router {
    let uploads = Uploads { api: api.clone(), permits: Arc::new(Semaphore::new(CONCURRENT_UPLOADS)) };
    Router::new()
        .route("/network/artifacts/{token}", put(put_artifact).with_state(uploads))
        .route("/network/proofs/{token}", get(get_proof).with_state(api))
        // Each upload is capped by its own kind's limit while it is read.
        .layer(DefaultBodyLimit::disable())
}

fn text(code: StatusCode, message: impl Into<String>) -> Reply {
    (code, message.into().into_bytes())
}

fn from_status(status: Status) -> Reply {
    let code = match status.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(code, status.message())
}

async fn put_artifact(State(uploads): State<Uploads>, Path(token): Path<String>, body: Body) -> Reply {
    let Ok(_permit) = uploads.permits.acquire().await else { return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down") };
    match store_upload(&uploads.api, &token, body).await {
        Ok(()) => text(StatusCode::OK, "stored"),
        Err(reply) => reply,
    }
}

async fn store_upload(api: &NetworkApi, token: &str, body: Body) -> Result<(), Reply> {
    let db = &api.intake.db;
    let upload = db.network_upload(token).await.map_err(|e| from_status(super::internal(e)))?;
    let Some(upload) = upload else { return Err(text(StatusCode::FORBIDDEN, "this upload URL is not valid")) };
    if upload.expires_at < Utc::now() {
        return Err(text(StatusCode::FORBIDDEN, format!("this upload URL expired at {}", upload.expires_at.to_rfc3339())));
    }
    let limits = &api.intake.limits;
    let (what, limit) = if upload.kind == PROGRAM { ("program", limits.max_program_bytes + 8) } else { ("stdin", limits.max_stdin_bytes) };
    // Compressed, a body is never much larger than what it decodes to.
    let body: Bytes = axum::body::to_bytes(body, limit.saturating_add(1 << 20)).await.map_err(|e| {
        text(StatusCode::PAYLOAD_TOO_LARGE, format!("the {what} upload is over this server's limit of {limit} bytes, or broke off: {e}"))
    })?;
    let sha256 = Sha256::digest(&body).to_vec();
    match db.take_network_upload(token, &sha256).await.map_err(|e| from_status(super::internal(e)))? {
        UploadTake::Taken => {}
        UploadTake::Repeat => return Ok(()),
        UploadTake::Refused => return Err(text(StatusCode::FORBIDDEN, "this upload URL was used already, or expired")),
    }
    let stored = check_and_store(api, &upload, what, limit, body).await;
    if stored.is_err() {
        // The client may retry with a good body.
        db.release_network_upload(token).await.map_err(|e| from_status(super::internal(e)))?;
    }
    stored
}

async fn check_and_store(api: &NetworkApi, upload: &NetworkUpload, what: &'static str, limit: usize, body: Bytes) -> Result<(), Reply> {
    let limits = &api.intake.limits;
    let decoded = tokio::task::spawn_blocking(move || decode_capped(&body, limit))
        .await
        .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e {
            Decode::TooLarge => {
                text(StatusCode::PAYLOAD_TOO_LARGE, format!("the {what} decodes to more than this server's limit of {limit} bytes"))
            }
            Decode::Bad(why) => text(StatusCode::BAD_REQUEST, format!("the {what} is not zstd-compressed bincode: {why}")),
        })?;
    let artifact = Artifact(upload.artifact.clone());
    if upload.kind == PROGRAM {
        let elf: Vec<u8> = bincode::deserialize(&decoded)
            .map_err(|e| text(StatusCode::BAD_REQUEST, format!("the program is not a bincode-serialized ELF: {e}")))?;
        validate_program(elf, limits.max_program_memory).await.map_err(from_status)?;
        api.store().upload_raw(&artifact, ArtifactType::Program, decoded).await.map_err(|e| from_status(crate::intake::store_error(e)))?;
    } else {
        validate_stdin(&decoded).map_err(from_status)?;
        api.store().upload_raw(&artifact, ArtifactType::Stdin, decoded).await.map_err(|e| from_status(crate::intake::store_error(e)))?;
    }
    Ok(())
}

enum Decode {
    TooLarge,
    Bad(String),
}

/// zstd-decode `body`, refusing output past `limit` without ever holding more than that.
fn decode_capped(body: &[u8], limit: usize) -> Result<Vec<u8>, Decode> {
    let decoder = zstd::stream::read::Decoder::new(body).map_err(|e| Decode::Bad(e.to_string()))?;
    let mut out = Vec::new();
    decoder.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| Decode::Bad(e.to_string()))?;
    if out.len() > limit {
        return Err(Decode::TooLarge);
    }
    Ok(out)
}

async fn get_proof(State(api): State<NetworkApi>, Path(token): Path<String>) -> Reply {
    let db = &api.intake.db;
    let request = match db.network_request_by_token(&token).await {
        Ok(Some(request)) => request,
        Ok(None) => return text(StatusCode::NOT_FOUND, "no proof at this URL"),
        Err(e) => return from_status(super::internal(e)),
    };
    let proof = match db.get_proof(&request.proof_id).await {
        Ok(Some(proof)) => proof,
        Ok(None) => return text(StatusCode::NOT_FOUND, format!("proof {} is gone (past its retention)", request.proof_id)),
        Err(e) => return from_status(super::internal(e)),
    };
    if proof.status != ProofStatus::Completed {
        return text(StatusCode::CONFLICT, format!("proof {} is {}", proof.id, proof.status.as_str()));
    }
    let stored: Result<ProofFromNetwork, _> = api.store().download(&Artifact(proof.proof_artifact.clone())).await;
    match stored {
        // The SDK decodes the body with plain bincode: no compression, no Content-Encoding.
        Ok(proof) => match bincode::serialize(&proof) {
            Ok(bytes) => (StatusCode::OK, bytes),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Err(e) if proofjobs_pipeline::artifacts::is_not_found(&e) => {
            text(StatusCode::GONE, format!("proof {} is gone from the artifact store (past its retention)", proof.id))
        }
        Err(e) => from_status(crate::intake::store_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_stops_at_the_limit() {
        let body = zstd::encode_all(&vec![0u8; 10_000][..], 3).unwrap();
        assert_eq!(decode_capped(&body, 10_000).ok().map(|v| v.len()), Some(10_000));
        assert!(matches!(decode_capped(&body, 9_999), Err(Decode::TooLarge)));
        assert!(matches!(decode_capped(b"not zstd", 100), Err(Decode::Bad(_))));
    }
}
