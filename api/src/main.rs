//! proofjobs-api: the gRPC front door of a cluster deployment.

use clap::Parser;
use proofjobs_api::{auth::Auth, server, Intake, Limits};
use proofjobs_pipeline::{
    artifacts::{ArtifactStore, StoreConfig},
    state::{Db, Notifications},
};

#[derive(Parser)]
#[command(name = "proofjobs-api")]
struct Args {
    #[arg(long, env = "PROOFJOBS_API_ADDR", default_value = "0.0.0.0:50051")]
    addr: String,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "PROOFJOBS_ARTIFACT_STORE")]
    artifact_store: String,
    #[arg(long, env = "PROOFJOBS_MAX_STDIN_BYTES", default_value_t = 1 << 30)]
    max_stdin_bytes: usize,
    #[arg(long, env = "PROOFJOBS_MAX_PROGRAM_BYTES", default_value_t = 256 << 20)]
    max_program_bytes: usize,
    /// Memory a program's loadable segments may claim in all; a program claiming more is refused
    /// before SP1's loader builds its memory image.
    #[arg(long, env = "PROOFJOBS_MAX_PROGRAM_MEMORY_BYTES", default_value_t = proofjobs_api::program_check::DEFAULT_MAX_PROGRAM_MEMORY)]
    max_program_memory_bytes: u64,
    #[arg(long, env = "PROOFJOBS_DEFAULT_DEADLINE_SECS", default_value_t = 4 * 3600)]
    default_deadline_secs: u64,
    /// Quotes: seconds a GPU node takes to start and pull the runner image, added to the ETA of
    /// a mode that runs on GPU runners when none ran within --quote-gpu-node-idle-secs.
    #[arg(long, env = "PROOFJOBS_QUOTE_GPU_SCALE_UP_SECS", default_value_t = 240)]
    quote_gpu_scale_up_secs: u64,
    /// Quotes: how long a GPU node stays up after its last runner (the autoscaler's scale-down delay).
    #[arg(long, env = "PROOFJOBS_QUOTE_GPU_NODE_IDLE_SECS", default_value_t = 600)]
    quote_gpu_node_idle_secs: u64,
    /// GetProof offers proofs of at least this many bytes as a presigned download URL from the
    /// artifact store's S3 tier (to clients that accept one, such as `proofctl get --out`)
    /// instead of streaming them; needs `spill=` in the artifact store URL. Unset: always streamed.
    #[arg(long, env = "PROOFJOBS_PROOF_URL_THRESHOLD")]
    proof_url_threshold: Option<usize>,
    /// How long a proof download URL stays valid (at most 7 days, S3's limit).
    #[arg(long, env = "PROOFJOBS_PROOF_URL_TTL_SECS", default_value_t = 900)]
    proof_url_ttl_secs: u64,
    /// `keys`: every call needs a bearer API key (`proofctl admin keys create`). `none`: no
    /// authentication at all, every caller an admin — only behind a network you trust.
    #[arg(long, env = "PROOFJOBS_AUTH", default_value = "keys", value_parser = ["keys", "none"])]
    auth: String,
    /// Serve the prover-network API that stock sp1-sdk speaks, for clients that reach this api at
    /// this URL (their NETWORK_RPC_URL, e.g. `https://prover.example.com`); artifact upload and
    /// proof download URLs are built on it. Unset: no network API.
    #[arg(long, env = "PROOFJOBS_NETWORK_URL")]
    network_url: Option<String>,
    /// Who may use the network API. `allowlist`: addresses registered with `proofctl admin network
    /// allow`. `verify`: any address whose signature verifies, as its own requester. `none`: no
    /// signature needed — only behind a network you trust.
    #[arg(long, env = "PROOFJOBS_NETWORK_AUTH", default_value = "allowlist", value_parser = ["allowlist", "verify", "none"])]
    network_auth: String,
    /// How long a network upload URL (CreateArtifact) stays usable.
    #[arg(long, env = "PROOFJOBS_NETWORK_UPLOAD_TTL_SECS", default_value_t = 3600)]
    network_upload_ttl_secs: u64,
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key); plaintext without.
    #[arg(long, env = "PROOFJOBS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "PROOFJOBS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let db = Db::connect(&args.database_url, 32).await?;
    db.migrate().await?;
    let store = ArtifactStore::connect(&args.artifact_store, StoreConfig::default()).await?;
    let notifications = Notifications::listen(&db).await?;
    let limits = Limits {
        max_program_bytes: args.max_program_bytes,
        max_program_memory: args.max_program_memory_bytes,
        max_stdin_bytes: args.max_stdin_bytes,
        default_deadline: std::time::Duration::from_secs(args.default_deadline_secs),
        quotes: proofjobs_api::quote::Settings {
            gpu_scale_up: std::time::Duration::from_secs(args.quote_gpu_scale_up_secs),
            gpu_node_idle: std::time::Duration::from_secs(args.quote_gpu_node_idle_secs),
        },
        proof_urls: args.proof_url_threshold.map(|threshold| proofjobs_api::downloads::Settings {
            threshold,
            ttl: std::time::Duration::from_secs(args.proof_url_ttl_secs),
        }),
    };
    let auth = match args.auth.as_str() {
        "none" => {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--auth none): anyone who reaches {} can submit, read, cancel and rewrite every proof. Use this only behind a network you trust.",
                args.addr
            );
            Auth::Disabled
        }
        _ => Auth::Keys(db.clone()),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()));
            Some(tonic::transport::Identity::from_pem(read(cert)?, read(key)?))
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    // Kubernetes stops a pod with SIGTERM; a terminal with Ctrl-C.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let network = args.network_url.map(|url| proofjobs_api::network::Settings {
        url,
        auth: match args.network_auth.as_str() {
            "none" => proofjobs_api::network::NetworkAuth::None,
            "verify" => proofjobs_api::network::NetworkAuth::Verify,
            _ => proofjobs_api::network::NetworkAuth::Allowlist,
        },
        upload_ttl: std::time::Duration::from_secs(args.network_upload_ttl_secs),
    });
    let guard = server::Guard { auth, tls, network };
    server::serve(Intake::new(db, store, limits), notifications, listener, guard, async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    })
    .await
}
