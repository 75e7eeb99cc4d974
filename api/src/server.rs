//! Serving both APIs, and the standard health service that reports on them, on one listener.

use std::net::SocketAddr;

use proofjobs_pipeline::state::Notifications;
use sp1_prover_types::cluster::cluster_service_server::ClusterServiceServer;
use tokio::net::TcpListener;

use crate::{cluster::ClusterApi, health, proto::prover_service_server::ProverServiceServer, service::ProverApi, Intake};

/// Serve on `listener` until `shutdown` resolves. On shutdown the health service reports
/// NOT_SERVING first, then in-flight calls finish.
pub async fn serve(
    intake: Intake,
    notifications: Notifications,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "api listening");
    let prover = ProverServiceServer::new(ProverApi::new(intake.clone(), notifications)).max_decoding_message_size(64 << 20);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let tracker = tokio::spawn(health::track(reporter.clone(), intake.db.clone(), intake.store.clone()));
    let cluster = ClusterServiceServer::new(ClusterApi::new(intake));
    let draining = async move {
        shutdown.await;
        tracker.abort();
        health::set_all(&reporter, tonic_health::ServingStatus::NotServing).await;
    };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(prover)
        .add_service(cluster)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), draining)
        .await?;
    Ok(())
}
