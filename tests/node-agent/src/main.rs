//! `node-agent`: a process kubelet for tests.
//!
//! One process runs a whole fake fleet against a real apiserver: it registers Nodes in pools,
//! runs the pods bound to them as local processes (images mapped to binaries), reports their
//! status as a kubelet would, serves `kubectl logs`, and scales the pools like a cluster
//! autoscaler. See the k8s testing notes, section 4, for why this exists next to kwok.

mod autoscaler;
mod context;
mod events;
mod fleet;
mod images;
mod logs;
mod node;
mod pod;
mod pool;
mod process;
mod quantity;
mod status;
mod volumes;
mod worker;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::autoscaler::Autoscaler;
use crate::context::AgentContext;
use crate::events::EventLog;
use crate::fleet::Fleet;
use crate::images::ImageMap;
use crate::logs::LogRegistry;
use crate::pool::PoolSpec;

/// A process kubelet and fake autoscaler for tests: pods on its nodes run as local processes.
#[derive(Parser, Debug)]
#[command(name = "node-agent", version)]
struct Args {
    /// Kubeconfig of the cluster (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,

    /// Directory for pod logs (`logs/`) and default working directories (`pods/`).
    #[arg(long)]
    work_dir: PathBuf,

    /// IMAGE=BINARY: run BINARY for containers of IMAGE (tag and digest optional). Repeatable.
    #[arg(long = "image-map", value_name = "IMAGE=PATH")]
    image_map: Vec<String>,

    /// NAME:min=N,max=N,cpu=Q,memory=Q[,gpus=N][,label=k=v][,taint=k=v:Effect]. Repeatable;
    /// the first pool that fits an unschedulable pod is scaled.
    #[arg(long = "pool", value_name = "SPEC", required = true)]
    pools: Vec<PoolSpec>,

    /// Delay between an unschedulable pod and its new node's registration.
    #[arg(long, default_value_t = 2000)]
    scale_up_delay_ms: u64,

    /// A node above its pool's min with no running pods for this long is removed.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,

    /// Append node_up/node_down events as JSON lines to this file.
    #[arg(long)]
    events: Option<PathBuf>,

    /// Port of the HTTPS log server on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    log_port: u16,

    /// Lease renewal interval.
    #[arg(long, default_value_t = 10)]
    lease_secs: u64,

    /// Ready condition refresh interval.
    #[arg(long, default_value_t = 30)]
    ready_secs: u64,

    /// Cap on a pod's termination grace period.
    #[arg(long, default_value_t = 30)]
    max_grace_secs: u64,
}

/// The client, and the apiserver's host and port as pods see them (`KUBERNETES_SERVICE_HOST`/
/// `_PORT`, which the kubelet gives every pod for in-cluster config).
async fn client(kubeconfig: Option<&PathBuf>) -> Result<(kube::Client, Vec<(String, String)>)> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).with_context(|| format!("read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.context("load kubeconfig")?
        }
        None => kube::Config::infer().await.context("infer kube config")?,
    };
    let url = &config.cluster_url;
    let service_env = match (url.host(), url.port_u16()) {
        (Some(host), port) => vec![
            ("KUBERNETES_SERVICE_HOST".to_string(), host.to_string()),
            ("KUBERNETES_SERVICE_PORT".to_string(), port.unwrap_or(443).to_string()),
        ],
        _ => Vec::new(),
    };
    Ok((kube::Client::try_from(config).context("build kube client")?, service_env))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Only ring is compiled in; make it the process default for kube's client too.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut names = HashSet::new();
    for p in &args.pools {
        if !names.insert(p.name.clone()) {
            bail!("pool {} given twice", p.name);
        }
    }
    let images = ImageMap::parse(&args.image_map)?;
    for (image, path) in images.entries() {
        if !path.exists() {
            tracing::warn!(%image, path = %path.display(), "mapped binary does not exist (yet)");
        }
    }
    std::fs::create_dir_all(args.work_dir.join("logs")).context("create work dir")?;
    let work_dir = args.work_dir.canonicalize().context("resolve work dir")?;

    let listener = TcpListener::bind(("127.0.0.1", args.log_port)).await.context("bind the log server")?;
    let log_port = listener.local_addr()?.port();
    let (acceptor, _cert) = logs::tls_acceptor()?;
    let registry = LogRegistry::new(work_dir.join("logs"));

    let (client, service_env) = client(args.kubeconfig.as_ref()).await?;
    let ctx = Arc::new(AgentContext {
        client: client.clone(),
        images,
        base_env: context::base_env_from_host().into_iter().chain(service_env).collect(),
        work_dir,
        logs: registry.clone(),
        log_port,
        max_grace: Duration::from_secs(args.max_grace_secs),
        lease_interval: Duration::from_secs(args.lease_secs.max(1)),
        ready_interval: Duration::from_secs(args.ready_secs.max(1)),
    });

    let cancel = CancellationToken::new();
    let log_server = tokio::spawn(logs::serve(listener, acceptor, registry, cancel.clone()));
    let fleet = Arc::new(Fleet::new(ctx, args.pools.clone(), EventLog::open(args.events.as_deref())?));

    let started = tokio::select! {
        res = fleet.start() => res,
        _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted while starting")),
    };
    if let Err(err) = started {
        fleet.shutdown().await;
        cancel.cancel();
        return Err(err);
    }
    let autoscaler = Autoscaler::new(fleet.clone(), Duration::from_millis(args.scale_up_delay_ms), Duration::from_secs(args.idle_secs));
    let scaler = tokio::spawn(autoscaler.run(client, cancel.clone()));
    tracing::info!(log_port, pools = args.pools.len(), "node agent ready");
    println!("node-agent ready log_port={log_port}");

    shutdown_signal().await;
    cancel.cancel();
    let _ = scaler.await;
    fleet.shutdown().await;
    let _ = log_server.await;
    Ok(())
}
