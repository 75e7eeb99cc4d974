//! The standard gRPC health service (`grpc.health.v1.Health`), so Kubernetes' native gRPC
//! probes and load balancers can tell a serving api from one that has lost its database or
//! artifact store. A pod that cannot reach either is taken out of its Service's endpoints
//! (readiness) instead of accepting requests it would fail.

use std::time::Duration;

use proofjobs_pipeline::{artifacts::ArtifactStore, state::Db};
use sp1_prover_types::cluster::cluster_service_server::SERVICE_NAME as CLUSTER_SERVICE;
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::proto::prover_service_server::SERVICE_NAME as PROVER_SERVICE;

/// How often the dependencies are checked; a probe sees a change within this time.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A dependency that does not answer within this counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps the health status of the whole server ("") and of both services in step with whether
/// PostgreSQL and the artifact store answer. Runs until the process ends.
pub async fn track(reporter: HealthReporter, db: Db, store: ArtifactStore) {
    let mut last: Option<ServingStatus> = None;
    loop {
        let problem = match tokio::time::timeout(CHECK_TIMEOUT, async { tokio::try_join!(db.ping(), store.ping()) }).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        let status = if problem.is_some() { ServingStatus::NotServing } else { ServingStatus::Serving };
        if last != Some(status) {
            match &problem {
                Some(p) => tracing::warn!(problem = %p, "not serving: database or artifact store unreachable"),
                None if last.is_some() => tracing::info!("serving again"),
                None => {}
            }
            set_all(&reporter, status).await;
            last = Some(status);
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Marks everything not serving, e.g. while draining on shutdown.
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for service in ["", PROVER_SERVICE, CLUSTER_SERVICE] {
        reporter.set_service_status(service, status).await;
    }
}
