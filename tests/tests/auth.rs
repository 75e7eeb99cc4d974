//! Authentication and isolation on the real api (PostgreSQL, Redis): every RPC of both services
//! refuses a missing, malformed, unknown, revoked or expired key; requesters see only their own
//! proofs; `ProofRequestUpdate` is for admins; keys are managed with `proofctl admin keys`; and
//! the api serves TLS when given a certificate.

use std::time::Duration;

use proofjobs_api::{
    auth::ProverClient,
    proto::{CancelRequest, GetProofRequest, GetRequest, ListRequest, WatchRequest},
};
use proofjobs_tests::*;
use sp1_prover_types::cluster::{
    ProofRequestCancelRequest, ProofRequestCreateRequest, ProofRequestGetRequest, ProofRequestListRequest, ProofRequestUpdateRequest,
    SetClusterComponentInfoRequest,
};
use tonic::{Code, Status};

/// Calls every method of both services once with minimal arguments; each method's outcome.
async fn call_every_method(
    prover: &mut ProverClient,
    cluster: &mut ClusterClient,
    proof_id: &str,
) -> Vec<(&'static str, Result<(), Status>)> {
    let id = || proof_id.to_string();
    let mut out = Vec::new();
    let messages = submit_messages("execute", FIBONACCI_ELF, &fibonacci_stdin(10), 0, 0);
    out.push(("ProverService/Submit", prover.submit(futures::stream::iter(messages)).await.map(drop)));
    out.push(("ProverService/Get", prover.get(GetRequest { proof_id: id() }).await.map(drop)));
    out.push(("ProverService/Watch", prover.watch(WatchRequest { proof_id: id() }).await.map(drop)));
    out.push(("ProverService/Cancel", prover.cancel(CancelRequest { proof_id: id() }).await.map(drop)));
    out.push(("ProverService/List", prover.list(ListRequest::default()).await.map(drop)));
    out.push(("ProverService/GetProof", prover.get_proof(GetProofRequest { proof_id: id(), accept_url: false }).await.map(drop)));
    // No program: a handler refuses it at once (no execution to wait for).
    let empty = submit_messages("core", &[], &[], 0, 0);
    out.push(("ProverService/Quote", prover.quote(futures::stream::iter(empty)).await.map(drop)));
    let create = ProofRequestCreateRequest {
        proof_id: format!("auth_{}", uuid::Uuid::now_v7().simple()),
        program_artifact_id: "artifact_none".into(),
        stdin_artifact_id: "artifact_none".into(),
        deadline: now() + 600,
        ..Default::default()
    };
    out.push(("ClusterService/ProofRequestCreate", cluster.proof_request_create(create).await.map(drop)));
    out.push((
        "ClusterService/ProofRequestCancel",
        cluster.proof_request_cancel(ProofRequestCancelRequest { proof_id: id() }).await.map(drop),
    ));
    let update = ProofRequestUpdateRequest { proof_id: id(), ..Default::default() };
    out.push(("ClusterService/ProofRequestUpdate", cluster.proof_request_update(update).await.map(drop)));
    out.push(("ClusterService/ProofRequestGet", cluster.proof_request_get(ProofRequestGetRequest { proof_id: id() }).await.map(drop)));
    out.push(("ClusterService/ProofRequestList", cluster.proof_request_list(ProofRequestListRequest::default()).await.map(drop)));
    let info = SetClusterComponentInfoRequest::default();
    out.push(("ClusterService/SetClusterComponentInfo", cluster.set_cluster_component_info(info).await.map(drop)));
    out.push(("ClusterService/GetClusterComponentInfo", cluster.get_cluster_component_info(()).await.map(drop)));
    out.push(("ClusterService/Healthcheck", cluster.healthcheck(()).await.map(drop)));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_refuses_missing_malformed_unknown_revoked_and_expired_keys() {
    init_tracing();
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let db = cluster.db.db().await;
    let (revoked, revoked_key) = db.create_key("tenant", false, None, "").await.unwrap();
    assert!(db.revoke_key(&revoked.id).await.unwrap());
    let past = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    let (_, expired_key) = db.create_key("tenant", false, Some(past), "").await.unwrap();
    let unknown = format!("pj_0123456789ab_{}", "0".repeat(64));
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("missing", None, "no API key"),
        ("malformed", Some("let-me-in"), "malformed"),
        ("unknown", Some(&unknown), "not known"),
        ("revoked", Some(&revoked_key), "revoked"),
        ("expired", Some(&expired_key), "expired"),
    ];
    let before = db.list_proofs(&[], None, 1000, 0).await.unwrap().len();
    for (case, key, says) in cases {
        let mut prover = cluster.client_with_key(key).await;
        let mut service = cluster.cluster_client(Some(key.unwrap_or(""))).await;
        let outcomes = call_every_method(&mut prover, &mut service, "any-proof").await;
        assert_eq!(outcomes.len(), 15, "every method of both services");
        for (method, outcome) in outcomes {
            let status = outcome.expect_err(&format!("{case} key: {method} was let through"));
            assert_eq!(status.code(), Code::Unauthenticated, "{case} key, {method}: {status}");
            assert!(status.message().contains(says), "{case} key, {method}: {:?} should say {says:?}", status.message());
        }
    }
    assert_eq!(db.list_proofs(&[], None, 1000, 0).await.unwrap().len(), before, "refused calls created nothing");

    // With a valid key the same calls reach their handlers: none is refused as unauthenticated.
    let mut prover = cluster.client().await;
    let mut service = cluster.cluster_client(None).await;
    for (method, outcome) in call_every_method(&mut prover, &mut service, "any-proof").await {
        if let Err(status) = outcome {
            assert_ne!(status.code(), Code::Unauthenticated, "{method} refused a valid key: {status}");
        }
    }

    // The health service stays open for probes.
    let channel = tonic::transport::Channel::from_shared(cluster.endpoint.clone()).unwrap().connect().await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    assert!(health.is_ok(), "{health:?}");
    db.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requester_sees_only_its_own_proofs_and_only_admins_update() {
    init_tracing();
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let (key_a, key_b) = (cluster.create_key("alice", false).await, cluster.create_key("bob", false).await);
    let (mut alice, mut bob) = (cluster.client_with_key(Some(&key_a)).await, cluster.client_with_key(Some(&key_b)).await);
    let (mut alice_cluster, mut bob_cluster) = (cluster.cluster_client(Some(&key_a)).await, cluster.cluster_client(Some(&key_b)).await);

    // Alice's proof, with an idempotency key.
    let mut messages = submit_messages("execute", FIBONACCI_ELF, &fibonacci_stdin(1000), 0, 0);
    if let Some(proofjobs_api::proto::submit_request::Part::Header(h)) = &mut messages[0].part {
        h.idempotency_key = "same-key".into();
    }
    let alices = alice.submit(futures::stream::iter(messages.clone())).await.unwrap().into_inner().proof_id;
    let done = wait_finished(&mut alice, &alices, Duration::from_secs(120)).await.unwrap();
    assert_eq!(done.status, "completed", "{}", done.failure_cause);

    // Bob cannot tell Alice's proof from one that does not exist.
    let not_found = |status: Status, id: &str| {
        assert_eq!(status.code(), Code::NotFound, "{status}");
        assert_eq!(status.message(), format!("no proof with id {id:?}"));
    };
    not_found(bob.get(GetRequest { proof_id: alices.clone() }).await.unwrap_err(), &alices);
    not_found(bob.get(GetRequest { proof_id: "proof_nonexistent".into() }).await.unwrap_err(), "proof_nonexistent");
    not_found(bob.watch(WatchRequest { proof_id: alices.clone() }).await.unwrap_err(), &alices);
    not_found(bob.cancel(CancelRequest { proof_id: alices.clone() }).await.unwrap_err(), &alices);
    not_found(bob.get_proof(GetProofRequest { proof_id: alices.clone(), accept_url: false }).await.unwrap_err(), &alices);
    let bobs_list = bob.list(ListRequest::default()).await.unwrap().into_inner().proofs;
    assert!(bobs_list.iter().all(|p| p.id != alices), "Bob's list shows Alice's proof");

    // The same idempotency key from Bob is Bob's own: a new proof, not Alice's.
    let bobs = bob.submit(futures::stream::iter(messages)).await.unwrap().into_inner();
    assert!(bobs.created && bobs.proof_id != alices, "Bob's idempotency key returned {bobs:?}");

    // sp1-cluster's API: the same walls.
    let got = bob_cluster.proof_request_get(ProofRequestGetRequest { proof_id: alices.clone() }).await.unwrap().into_inner();
    assert!(got.proof_request.is_none(), "Bob read Alice's request: {got:?}");
    let cancel = bob_cluster.proof_request_cancel(ProofRequestCancelRequest { proof_id: alices.clone() }).await.unwrap_err();
    assert_eq!(cancel.code(), Code::NotFound, "{cancel}");
    let listed = bob_cluster.proof_request_list(ProofRequestListRequest::default()).await.unwrap().into_inner().proof_requests;
    assert!(listed.iter().all(|p| p.id != alices) && listed.iter().any(|p| p.id == bobs.proof_id), "{listed:?}");
    let update = ProofRequestUpdateRequest { proof_id: bobs.proof_id.clone(), proof_status: Some(3), ..Default::default() };
    let refused = bob_cluster.proof_request_update(update.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "a non-admin updated its own proof: {refused}");
    let refused = alice_cluster.set_cluster_component_info(SetClusterComponentInfoRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");

    // Alice still has her proof; the admin sees both and may update.
    assert_eq!(alice.get(GetRequest { proof_id: alices.clone() }).await.unwrap().into_inner().status, "completed");
    let mut admin = cluster.client().await;
    let all = admin.list(ListRequest::default()).await.unwrap().into_inner().proofs;
    assert!(all.iter().any(|p| p.id == alices) && all.iter().any(|p| p.id == bobs.proof_id), "the admin sees everyone's proofs");
    cluster.cluster_client(None).await.proof_request_update(update).await.unwrap();
    let db = cluster.db.db().await;
    assert_eq!(db.get_proof(&alices).await.unwrap().unwrap().owner, "alice");
    assert_eq!(db.get_proof(&bobs.proof_id).await.unwrap().unwrap().owner, "bob");
    db.close().await;
    cluster.shutdown().await;
}

/// A request may read only artifacts of its own requester and may not name an output that is in
/// use: Bob cannot prove over Alice's stdin (told it does not exist, word for word as for a
/// missing one) nor write over her data, and nothing of Alice's changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_names_only_its_requesters_artifacts() {
    init_tracing();
    let cluster = Cluster::start(None, &[]).await.unwrap();
    let (key_a, key_b) = (cluster.create_key("alice", false).await, cluster.create_key("bob", false).await);
    let (mut alice, mut bob) = (cluster.cluster_client(Some(&key_a)).await, cluster.cluster_client(Some(&key_b)).await);
    let mut conn = redis_connection().await;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let id = |what: &str, who: &str| format!("artifact_{what}_{who}_{suffix}");
    let program = bincode::serialize(&FIBONACCI_ELF.to_vec()).unwrap();
    for who in ["alice", "bob"] {
        put_like_sp1_cluster(&mut conn, &id("p", who), &program).await;
        put_like_sp1_cluster(&mut conn, &id("s", who), &fibonacci_stdin(10)).await;
    }
    let request = |proof: &str, program: String, stdin: String, output: Option<String>| ProofRequestCreateRequest {
        proof_id: format!("{proof}_{suffix}"),
        program_artifact_id: program,
        stdin_artifact_id: stdin,
        options_artifact_id: Some("1".into()),
        proof_artifact_id: output,
        deadline: now() + 600,
        ..Default::default()
    };
    let alices = request("alice", id("p", "alice"), id("s", "alice"), Some(id("o", "alice")));
    alice.proof_request_create(alices.clone()).await.unwrap();
    // Alice's retry of the same request is answered as before.
    assert_eq!(alice.proof_request_create(alices.clone()).await.unwrap_err().code(), Code::AlreadyExists);

    let denied = bob.proof_request_create(request("b1", id("p", "bob"), id("s", "alice"), None)).await.unwrap_err();
    let missing = bob.proof_request_create(request("b2", id("p", "bob"), id("s", "nobody"), None)).await.unwrap_err();
    assert_eq!((denied.code(), missing.code()), (Code::NotFound, Code::NotFound), "{denied} / {missing}");
    assert_eq!(denied.message().replace(&id("s", "alice"), "X"), missing.message().replace(&id("s", "nobody"), "X"));
    let denied = bob.proof_request_create(request("b3", id("p", "alice"), id("s", "bob"), None)).await.unwrap_err();
    assert_eq!(denied.code(), Code::NotFound, "{denied}");
    for output in [id("o", "alice"), id("s", "alice"), id("p", "bob")] {
        let refused = bob.proof_request_create(request("b4", id("p", "bob"), id("s", "bob"), Some(output.clone()))).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "output {output}: {refused}");
    }
    // Nor may an output name reach outside the artifacts (S3 keys are `<prefix><id>`; proof
    // downloads live under `<prefix>downloads/`).
    let escape = format!("downloads/{}.bin", alices.proof_id);
    let refused = bob.proof_request_create(request("b6", id("p", "bob"), id("s", "bob"), Some(escape))).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    // With his own artifacts and a fresh output, Bob's request goes through.
    bob.proof_request_create(request("b5", id("p", "bob"), id("s", "bob"), Some(id("o", "bob")))).await.unwrap();

    // Alice's request is untouched; both are cancelled (no proving needed here).
    let got = alice.proof_request_get(ProofRequestGetRequest { proof_id: alices.proof_id.clone() }).await.unwrap().into_inner();
    let got = got.proof_request.unwrap();
    assert_eq!((got.stdin_artifact_id, got.proof_artifact_id), (id("s", "alice"), Some(id("o", "alice"))));
    for (client, proof) in [(&mut alice, alices.proof_id.clone()), (&mut bob, format!("b5_{suffix}"))] {
        client.proof_request_cancel(ProofRequestCancelRequest { proof_id: proof }).await.unwrap();
    }
    let db = cluster.db.db().await;
    let bobs: Vec<String> = db.list_proofs(&[], Some("bob"), 10, 0).await.unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(bobs, vec![format!("b5_{suffix}")], "no refused request left a proof");
    db.close().await;
    cluster.shutdown().await;
}

fn proofctl(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(bin("proofctl")).args(args).env_remove("PROOFJOBS_API_KEY").envs(env.iter().copied()).output().unwrap()
}

/// The operator's path: the first key made against the database, used by proofctl, revoked;
/// and the api over TLS with a private CA.
#[tokio::test(flavor = "multi_thread")]
async fn proofctl_manages_keys_and_reaches_a_tls_api_with_them() {
    init_tracing();
    let tls_dir = std::path::PathBuf::from(required_env("PROOFJOBS_TLS_CA")).parent().unwrap().to_path_buf();
    let ca = tls_dir.join("ca.crt").display().to_string();
    let cluster = Cluster::start(
        None,
        &[
            ("PROOFJOBS_TLS_CERT", tls_dir.join("server.crt").display().to_string()),
            ("PROOFJOBS_TLS_KEY", tls_dir.join("server.key").display().to_string()),
        ],
    )
    .await
    .unwrap();
    let port = cluster.endpoint.rsplit(':').next().unwrap().to_string();
    let db_url = cluster.db.url.clone();
    let created = proofctl(&["admin", "keys", "create", "--requester", "ops", "--admin", "--database-url", &db_url], &[]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let key = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert!(key.starts_with("pj_"), "{key}");

    let https = format!("https://127.0.0.1:{port}");
    let list = |key: Option<&str>, api: &str| {
        let mut env = vec![("PROOFJOBS_CA_FILE", ca.as_str())];
        if let Some(key) = key {
            env.push(("PROOFJOBS_API_KEY", key));
        }
        proofctl(&["list", "--api", api], &env)
    };
    let keyless = list(None, &https);
    assert!(!keyless.status.success());
    assert!(String::from_utf8_lossy(&keyless.stderr).contains("Unauthenticated"), "{}", String::from_utf8_lossy(&keyless.stderr));
    let listed = list(Some(&key), &https);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let plaintext = list(Some(&key), &format!("http://127.0.0.1:{port}"));
    assert!(!plaintext.status.success(), "a plaintext call to the TLS port was answered");

    let id = key.split('_').nth(1).unwrap();
    let revoked = proofctl(&["admin", "keys", "revoke", id, "--database-url", &db_url], &[]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let after = list(Some(&key), &https);
    assert!(String::from_utf8_lossy(&after.stderr).contains("revoked"), "{}", String::from_utf8_lossy(&after.stderr));
    let keys = proofctl(&["admin", "keys", "list", "--database-url", &db_url], &[]);
    let table = String::from_utf8_lossy(&keys.stdout);
    assert!(table.lines().any(|l| l.starts_with(id) && l.contains("revoked")), "{table}");
    assert!(!table.contains(&key), "keys list must not print secrets");
    cluster.shutdown().await;
}
