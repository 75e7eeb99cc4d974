//! PostgreSQL and Redis over TLS, as managed stores require (RDS refuses plain connections by
//! default; ElastiCache with encryption in transit speaks only TLS). scripts/services.sh gives
//! both servers a certificate for 127.0.0.1 from a private CA; PostgreSQL is reached with
//! `sslmode=verify-full&sslrootcert=<ca>`, Redis with `rediss://` and the CA in SSL_CERT_FILE
//! (where the system's CA store would vouch for ElastiCache's certificate). Both must verify:
//! without the CA the same servers are refused.

use proofjobs_pipeline::{
    artifacts::{ArtifactStore, StoreConfig},
    state::Db,
};
use proofjobs_tests::required_env;
use sp1_prover_types::{Artifact, ArtifactClient};

#[test]
fn state_and_artifacts_work_over_verified_tls() {
    let ca = required_env("PROOFJOBS_TLS_CA");
    // rustls' native certificate loader reads SSL_CERT_FILE. Set before any thread exists (this
    // test binary has this one test, and the runtime is made below).
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("SSL_CERT_FILE", &ca) };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = required_env("DATABASE_TLS_URL");
        assert!(url.contains("sslmode=verify-full"), "{url}");
        let db = Db::connect(&url, 2).await.unwrap();
        let (ssl, version): (bool, String) =
            sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(db.pool()).await.unwrap();
        assert!(ssl, "the state connection is not encrypted");
        println!("PostgreSQL over {version}");
        db.ping().await.unwrap();
        db.close().await;
        let without_ca = url.replace(&format!("&sslrootcert={ca}"), "");
        let Err(refused) = Db::connect(&without_ca, 1).await else { panic!("a certificate from an unknown CA was accepted") };
        assert!(format!("{refused:#}").to_lowercase().contains("certificate"), "{refused:#}");

        let store = ArtifactStore::connect(&required_env("REDIS_TLS_URL"), StoreConfig::default()).await.unwrap();
        store.ping().await.unwrap();
        let artifact: Artifact = store.create_artifact().unwrap();
        let payload: Vec<u64> = (0..10_000).collect();
        store.upload(&artifact, payload.clone()).await.unwrap();
        let back: Vec<u64> = store.download(&artifact).await.unwrap();
        assert_eq!(back, payload, "artifact round trip over TLS");
        store.delete(&artifact, sp1_prover_types::ArtifactType::UnspecifiedArtifactType).await.unwrap();

        // The TLS port speaks only TLS: a plain client gets nowhere.
        let plain = required_env("REDIS_TLS_URL").replace("rediss://", "redis://");
        let plain_store = ArtifactStore::connect(&plain, StoreConfig::default()).await;
        let plain_ok = match plain_store {
            Ok(s) => tokio::time::timeout(std::time::Duration::from_secs(5), s.ping()).await.is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        };
        assert!(!plain_ok, "a plain connection to the TLS port worked");
    });
}
