//! Serving the APIs, and the standard health service that reports on them, on one listener.

use std::net::SocketAddr;

use proofjobs_pipeline::state::Notifications;
use sp1_prover_types::cluster::cluster_service_server::ClusterServiceServer;
use tokio::net::TcpListener;

use crate::{
    auth::{Auth, AuthLayer},
    cluster::ClusterApi,
    health,
    network::{artifact_proto::artifact_store_server::ArtifactStoreServer, proto::prover_network_server::ProverNetworkServer, NetworkApi},
    proto::prover_service_server::ProverServiceServer,
    service::ProverApi,
    Intake,
};

/// How the listener is guarded: who may call, and TLS when a certificate is given.
pub struct Guard {
    pub auth: Auth,
    /// PEM certificate chain and private key; None serves plaintext gRPC.
    pub tls: Option<tonic::transport::Identity>,
    /// The prover-network API, served beside the others when set (`network/`).
    pub network: Option<crate::network::Settings>,
}

/// Serve on `listener` until `shutdown` resolves. On shutdown the health service reports
/// NOT_SERVING first, then in-flight calls finish.
pub async fn serve(
    intake: Intake,
    notifications: Notifications,
    listener: TcpListener,
    guard: Guard,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, tls = guard.tls.is_some(), "api listening");
    let prover = ProverServiceServer::new(ProverApi::new(intake.clone(), notifications)?).max_decoding_message_size(64 << 20);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let tracker = tokio::spawn(health::track(reporter.clone(), intake.db.clone(), intake.store.clone()));
    let network_intake = intake.clone();
    let cluster = ClusterServiceServer::new(ClusterApi::new(intake));
    let draining = async move {
        shutdown.await;
        tracker.abort();
        health::set_all(&reporter, tonic_health::ServingStatus::NotServing).await;
    };
    let network = guard.network.map(|settings| NetworkApi::new(network_intake, settings));
    // The SDK's artifact uploads and proof downloads are plain HTTP/1.1 on this same listener.
    let mut builder = tonic::transport::Server::builder().accept_http1(network.is_some());
    if let Some(identity) = guard.tls {
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let mut routes = tonic::service::Routes::new(health_service).add_service(prover).add_service(cluster);
    if let Some(network) = network {
        tracing::info!(url = %network.url(), "prover-network API on");
        routes = routes
            .add_service(ProverNetworkServer::new(network.clone()).max_decoding_message_size(64 << 20))
            .add_service(ArtifactStoreServer::new(network.clone()));
        let grpc = std::mem::replace(routes.axum_router_mut(), axum::Router::new());
        *routes.axum_router_mut() = grpc.merge(crate::network::http::routes(network));
    }
    let router = builder.layer(AuthLayer::new(guard.auth)).add_routes(routes);
    router.serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), draining).await?;
    Ok(())
}
