//! The prover-network API against the real api, dispatcher, PostgreSQL and Redis: unmodified
//! sp1-sdk code (`tests/network-client`, stock sp1-sdk 6.10 with its `network` feature and no
//! proofjobs code) proves Fibonacci in the default auction mode and in hosted mode and verifies
//! the proof; an address not on the allowlist is refused before anything is stored; and, with
//! raw calls signed here, a retried RequestProof keeps its proof, stale nonces, tampered
//! signatures, foreign or mistyped artifacts and bad uploads get precise errors.

use std::process::Command;

use k256::ecdsa::SigningKey;
use proofjobs_api::network::{
    artifact_proto::{artifact_store_client::ArtifactStoreClient, CreateArtifactRequest},
    proto::{
        prover_network_client::ProverNetworkClient, CancelRequestRequestBody, CreateProgramRequestBody, GetNonceRequest,
        GetProofRequestStatusRequest, RequestProofCommon, SignedRequest,
    },
    signature::{address_of, personal_digest, show},
};
use proofjobs_tests::*;
use prost::Message;
use tonic::{transport::Channel, Code};

const STDIN_TYPE: i32 = 2;

fn key(byte: u8) -> SigningKey {
    SigningKey::from_slice(&[byte; 32]).unwrap()
}

fn hex_key(byte: u8) -> String {
    format!("0x{}", format!("{byte:02x}").repeat(32))
}

/// Sign as sp1-sdk does: EIP-191, r ‖ s ‖ 27+parity (+27 more for CreateArtifact).
fn sign(key: &SigningKey, message: &[u8], extra_v: u8) -> Vec<u8> {
    let (signature, id) = key.sign_prehash_recoverable(&personal_digest(message)).unwrap();
    let mut bytes = signature.to_bytes().to_vec();
    bytes.push(27 + id.to_byte() + extra_v);
    bytes
}

async fn channel(cluster: &Cluster) -> Channel {
    Channel::from_shared(cluster.endpoint.clone()).unwrap().connect().await.unwrap()
}

/// Run the stock client; its exit status and everything it printed.
fn stock_client(cluster: &Cluster, key: u8, n: u64, mode: &str) -> (bool, String) {
    let out = Command::new(bin("sp1-network-client"))
        .args([FIBONACCI_PATH.as_str(), &n.to_string(), "core", mode])
        .env("NETWORK_RPC_URL", &cluster.endpoint)
        .env("NETWORK_PRIVATE_KEY", hex_key(key))
        .output()
        .expect("running tests/network-client (scripts/test.sh builds it)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

static FIBONACCI_PATH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let path = std::env::temp_dir().join(format!("fibonacci-{}.elf", std::process::id()));
    std::fs::write(&path, FIBONACCI_ELF).unwrap();
    path.display().to_string()
});

/// CreateArtifact(STDIN) and a PUT of `stdin` as the SDK sends it; the artifact's URI.
async fn upload_stdin(cluster: &Cluster, key: &SigningKey, stdin: &[u8]) -> String {
    let mut artifacts = ArtifactStoreClient::new(channel(cluster).await);
    let created = artifacts
        .create_artifact(CreateArtifactRequest { signature: sign(key, b"create_artifact", 27), artifact_type: STDIN_TYPE })
        .await
        .unwrap()
        .into_inner();
    let body = zstd::encode_all(stdin, 3).unwrap();
    let reply = reqwest::Client::new().put(&created.artifact_presigned_url).body(body).send().await.unwrap();
    assert!(reply.status().is_success(), "{:?}", reply.text().await);
    created.artifact_uri
}

async fn nonce(network: &mut ProverNetworkClient<Channel>, key: &SigningKey) -> u64 {
    let address = address_of(key.verifying_key()).to_vec();
    network.get_nonce(GetNonceRequest { address }).await.unwrap().into_inner().nonce
}

fn signed(key: &SigningKey, body: Vec<u8>) -> SignedRequest {
    SignedRequest { format: 1, signature: sign(key, &body, 0), body }
}

fn proof_body(nonce: u64, vk_hash: &[u8], stdin_uri: &str) -> Vec<u8> {
    RequestProofCommon {
        nonce,
        vk_hash: vk_hash.to_vec(),
        version: "sp1-v6.1.0".into(),
        mode: 1,
        strategy: 1,
        stdin_uri: stdin_uri.into(),
        deadline: now() + 3600,
        cycle_limit: u64::MAX,
        gas_limit: u64::MAX,
        ..Default::default()
    }
    .encode_to_vec()
}

async fn count(cluster: &Cluster, sql: &str) -> i64 {
    let db = cluster.db.db().await;
    let n: i64 = sqlx::query_scalar(sql).fetch_one(db.pool()).await.unwrap();
    db.close().await;
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_sp1_sdk_proves_through_the_network_api_for_allowed_addresses_only() {
    init_tracing();
    let _prover = prover_lock().await;
    let cluster = Cluster::start(None, &[("PROOFJOBS_NETWORK_URL", "{endpoint}".into())]).await.unwrap();
    let allowed = key(0x11);
    let address = show(&address_of(allowed.verifying_key()));

    // Not on the allowlist: refused at its first signed call, nothing stored.
    let (ok, out) = stock_client(&cluster, 0x22, 10, "auction");
    assert!(!ok && out.contains("may not use this cluster"), "{out}");
    assert_eq!(count(&cluster, "SELECT count(*) FROM network_uploads").await, 0);
    assert_eq!(count(&cluster, "SELECT count(*) FROM proofs").await, 0);

    let allow = Command::new(bin("proofctl"))
        .args(["admin", "network", "allow", &address, "--requester", "team-net"])
        .env("DATABASE_URL", &cluster.db.url)
        .output()
        .unwrap();
    assert!(allow.status.success(), "{}", String::from_utf8_lossy(&allow.stderr));

    // The default (auction) mode registers the program; hosted mode finds it registered.
    for mode in ["auction", "hosted"] {
        let (ok, out) = stock_client(&cluster, 0x11, 10, mode);
        assert!(ok && out.contains("verified"), "{mode}: {out}\n{}", cluster.runner_logs());
    }
    assert_eq!(count(&cluster, "SELECT count(*) FROM network_programs").await, 1);
    assert_eq!(
        count(&cluster, "SELECT count(*) FROM proofs WHERE owner = 'team-net' AND status = 'completed' AND id LIKE 'net_%'").await,
        2
    );
    let team_key = cluster.create_key("team-net", false).await;
    let list =
        Command::new(bin("proofctl")).args(["list", "--api", &cluster.endpoint]).env("PROOFJOBS_API_KEY", &team_key).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(listed.lines().filter(|l| l.starts_with("net_") && l.contains("completed")).count(), 2, "{listed}");

    // Raw calls, signed here, on the program the client registered.
    let (vk_hash, vk): (Vec<u8>, Vec<u8>) = {
        let db = cluster.db.db().await;
        sqlx::query_as("SELECT vk_hash, vk FROM network_programs").fetch_one(db.pool()).await.unwrap()
    };
    let mut network = ProverNetworkClient::new(channel(&cluster).await);
    let stdin_uri = upload_stdin(&cluster, &allowed, &fibonacci_stdin(10)).await;

    // A stale nonce is ABORTED (the SDK fetches a new one and signs again).
    let n = nonce(&mut network, &allowed).await;
    let stale = network.request_proof(signed(&allowed, proof_body(n + 5, &vk_hash, &stdin_uri))).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    // A tampered body recovers to an address that is not on the allowlist.
    let mut tampered = signed(&allowed, proof_body(n, &vk_hash, &stdin_uri));
    tampered.body[1] ^= 1;
    assert_eq!(network.request_proof(tampered).await.unwrap_err().code(), Code::PermissionDenied);

    // A retry after a lost answer (new nonce, new signature) gets the same request, one proof.
    let first = network.request_proof(signed(&allowed, proof_body(n, &vk_hash, &stdin_uri))).await.unwrap().into_inner();
    let again = nonce(&mut network, &allowed).await;
    assert_eq!(again, n + 1);
    let retry = network.request_proof(signed(&allowed, proof_body(again, &vk_hash, &stdin_uri))).await.unwrap().into_inner();
    let request_id = first.body.unwrap().request_id;
    assert_eq!(request_id.len(), 32);
    assert_eq!(first.tx_hash.len(), 32);
    assert_eq!(retry.body.unwrap().request_id, request_id);
    assert_eq!(count(&cluster, "SELECT count(*) FROM proofs").await, 3);

    // Its owner cancels it: unfulfillable, with the deadline it asked for.
    let cancel = CancelRequestRequestBody { nonce: nonce(&mut network, &allowed).await, request_id: request_id.clone() }.encode_to_vec();
    network.cancel_request(signed(&allowed, cancel)).await.unwrap();
    let status = network.get_proof_request_status(GetProofRequestStatusRequest { request_id }).await.unwrap().into_inner();
    assert_eq!(status.fulfillment_status, 4, "{status:?}");
    assert!(status.deadline > now());

    // A stdin upload named as a program is refused; so are bad uploads.
    let n = nonce(&mut network, &allowed).await;
    let program = CreateProgramRequestBody { nonce: n, vk_hash: vk_hash.clone(), vk: vk.clone(), program_uri: stdin_uri };
    let refused = network.create_program(signed(&allowed, program.encode_to_vec())).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let program = CreateProgramRequestBody { vk: vk[1..].to_vec(), ..program };
    let refused = network.create_program(signed(&allowed, program.encode_to_vec())).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "a vk that does not decode: {refused:?}");
    let http = reqwest::Client::new();
    let unknown = http.put(format!("{}/network/artifacts/{}", cluster.endpoint, "0".repeat(64))).body(vec![1]).send().await.unwrap();
    assert_eq!(unknown.status().as_u16(), 403);
    let mut artifacts = ArtifactStoreClient::new(channel(&cluster).await);
    let created = artifacts
        .create_artifact(CreateArtifactRequest { signature: sign(&allowed, b"create_artifact", 27), artifact_type: STDIN_TYPE })
        .await
        .unwrap()
        .into_inner();
    let garbage = http.put(&created.artifact_presigned_url).body(b"not zstd".to_vec()).send().await.unwrap();
    assert_eq!(garbage.status().as_u16(), 400, "{:?}", garbage.text().await);
    let not_stdin = http.put(&created.artifact_presigned_url).body(zstd::encode_all(&b"xyz"[..], 3).unwrap()).send().await.unwrap();
    assert_eq!(not_stdin.status().as_u16(), 400);
    // Refused bodies leave the URL usable; a stored one uses it up (its exact repeat is OK).
    let good = zstd::encode_all(&fibonacci_stdin(11)[..], 3).unwrap();
    for _ in 0..2 {
        let stored = http.put(&created.artifact_presigned_url).body(good.clone()).send().await.unwrap();
        assert_eq!(stored.status().as_u16(), 200, "{:?}", stored.text().await);
    }
    let other = zstd::encode_all(&fibonacci_stdin(12)[..], 3).unwrap();
    let reused = http.put(&created.artifact_presigned_url).body(other).send().await.unwrap();
    assert_eq!(reused.status().as_u16(), 403, "an upload URL takes one body");
    // GetProgram has no signer: every requester registers its own programs.
    let lookup = network.get_program(proofjobs_api::network::proto::GetProgramRequest { vk_hash: vk_hash.clone() }).await;
    assert_eq!(lookup.unwrap_err().code(), Code::NotFound);
    let unsupported =
        artifacts.create_artifact(CreateArtifactRequest { signature: sign(&allowed, b"create_artifact", 27), artifact_type: 3 }).await;
    assert_eq!(unsupported.unwrap_err().code(), Code::InvalidArgument);
    cluster.shutdown().await;
}

/// `verify` mode: any address whose signature verifies is its own requester; a signature that
/// does not recover is UNAUTHENTICATED, and one that recovers to another address owns nothing.
#[tokio::test(flavor = "multi_thread")]
async fn in_verify_mode_the_signer_is_the_requester_and_a_tampered_signature_gets_nothing() {
    init_tracing();
    let env = [("PROOFJOBS_NETWORK_URL", "{endpoint}".to_string()), ("PROOFJOBS_NETWORK_AUTH", "verify".to_string())];
    let cluster = Cluster::start(None, &env).await.unwrap();
    let me = key(0x33);
    let stdin_uri = upload_stdin(&cluster, &me, &fibonacci_stdin(10)).await;
    let owner = show(&address_of(me.verifying_key()));
    assert_eq!(count(&cluster, &format!("SELECT count(*) FROM network_uploads WHERE owner = '{owner}'")).await, 1);

    let mut artifacts = ArtifactStoreClient::new(channel(&cluster).await);
    let mut bad_v = sign(&me, b"create_artifact", 27);
    bad_v[64] = 35;
    let refused = artifacts.create_artifact(CreateArtifactRequest { signature: bad_v, artifact_type: STDIN_TYPE }).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // The body is tampered after signing: the signature names a stranger, whose stdin this is not.
    let mut network = ProverNetworkClient::new(channel(&cluster).await);
    let n = nonce(&mut network, &me).await;
    let mut tampered = signed(&me, proof_body(n, &[7; 32], &stdin_uri));
    let at = tampered.body.windows(32).position(|w| w == [7; 32]).unwrap();
    tampered.body[at] ^= 1;
    let refused = network.request_proof(tampered).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("is not an artifact uploaded"), "{refused:?}");
    // Unregistered program, genuine signature: a precise precondition failure, no proof.
    let unknown = network.request_proof(signed(&me, proof_body(n, &[7; 32], &stdin_uri))).await.unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition, "{unknown:?}");
    assert!(unknown.message().contains("is registered"), "{unknown:?}");
    assert_eq!(count(&cluster, "SELECT count(*) FROM proofs").await, 0);
    cluster.shutdown().await;
}
