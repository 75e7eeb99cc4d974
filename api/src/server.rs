//! Serving both APIs on one listener.

use std::net::SocketAddr;

use proofjobs_pipeline::state::Notifications;
use sp1_prover_types::cluster::cluster_service_server::ClusterServiceServer;
use tokio::net::TcpListener;

use crate::{cluster::ClusterApi, proto::prover_service_server::ProverServiceServer, service::ProverApi, Intake};

/// Serve on `listener` until `shutdown` resolves.
pub async fn serve(
    intake: Intake,
    notifications: Notifications,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "api listening");
    let prover = ProverServiceServer::new(ProverApi::new(intake.clone(), notifications)).max_decoding_message_size(64 << 20);
    let cluster = ClusterServiceServer::new(ClusterApi::new(intake));
    tonic::transport::Server::builder()
        .add_service(prover)
        .add_service(cluster)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
