//! Who is calling. Every RPC passes through [`AuthLayer`], one tower layer in front of all
//! services, so no method can be added without authentication: it reads the bearer key from the
//! `authorization` header, looks it up, and hands the handler a [`Caller`] in the request's
//! extensions — or answers UNAUTHENTICATED itself. Only the standard health service (probes) and
//! the prover-network API (signed requests and token URLs, checked in `network/`) are open.
//! [`Bearer`] is the client side, used by proofctl and the tests.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use proofjobs_pipeline::state::{Db, ProofRow};
use tonic::{metadata::MetadataValue, Request, Status};

/// Whom a request speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The requester name; proofs it creates are owned by it.
    pub requester: String,
    /// Admins see and act on every requester's proofs, and may use `ProofRequestUpdate`.
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see a proof. A proof it may not see is reported as not found, so
    /// nobody learns whether another requester's proof exists.
    pub fn may_see(&self, proof: &ProofRow) -> bool {
        self.admin || proof.owner == self.requester
    }

    /// The owner filter for listings: None (everyone's) for admins.
    pub fn owner_filter(&self) -> Option<&str> {
        (!self.admin).then_some(self.requester.as_str())
    }

    /// The caller the layer attached to `request`. A request without one never reaches a handler
    /// (the layer answers it), so its absence is a wiring error.
    pub fn of<T>(request: &Request<T>) -> Result<Caller, Status> {
        request.extensions().get::<Caller>().cloned().ok_or_else(|| Status::internal("request reached a handler unauthenticated"))
    }
}

/// How the api decides who calls.
#[derive(Clone)]
pub enum Auth {
    /// Bearer API keys from the `api_keys` table (the default).
    Keys(Db),
    /// Everyone is an admin named `anonymous`: for embedded mode and trusted networks only.
    Disabled,
}

pub const ANONYMOUS: &str = "anonymous";

impl Auth {
    async fn caller(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let db = match self {
            Auth::Disabled => return Ok(Caller { requester: ANONYMOUS.into(), admin: true }),
            Auth::Keys(db) => db,
        };
        let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
            Status::unauthenticated("no API key: send `authorization: Bearer <key>` (proofctl: --api-key or PROOFJOBS_API_KEY)")
        })?;
        let key = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer <key>`"))?;
        match db.authenticate(key).await {
            Ok(Ok(holder)) => Ok(Caller { requester: holder.requester, admin: holder.admin }),
            Ok(Err(refusal)) => Err(Status::unauthenticated(refusal.message())),
            Err(e) => {
                tracing::error!("checking an API key: {e:#}");
                Err(Status::unavailable("cannot check API keys right now (database unreachable)"))
            }
        }
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Auth) -> AuthLayer {
        AuthLayer { auth: Arc::new(auth) }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, auth: self.auth.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
}

/// Paths open without a key: the standard health service, which kubelet probes call, and the
/// prover-network API, whose callers prove who they are by signature (`network/`) and whose
/// artifact URLs carry their own unguessable tokens.
fn is_open(path: &str) -> bool {
    ["/grpc.health.v1.Health/", "/network.ProverNetwork/", "/artifact.ArtifactStore/", "/network/"]
        .iter()
        .any(|open| path.starts_with(open))
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service that was polled ready handles this request; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            if is_open(request.uri().path()) {
                return inner.call(request).await;
            }
            match auth.caller(request.headers()).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// A `ProverService` client that sends its key with every call.
pub type ProverClient = crate::proto::prover_service_client::ProverServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// Client side: adds `authorization: Bearer <key>` to every call when a key is set.
#[derive(Clone, Default)]
pub struct Bearer {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Bearer {
    pub fn new(key: Option<&str>) -> Result<Bearer, anyhow::Error> {
        let header = match key.map(str::trim).filter(|k| !k.is_empty()) {
            Some(key) => {
                Some(format!("Bearer {key}").parse().map_err(|_| anyhow::anyhow!("the API key has characters a header cannot carry"))?)
            }
            None => None,
        };
        Ok(Bearer { header })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_keys_everyone_is_the_anonymous_admin() {
        let caller = Auth::Disabled.caller(&http::HeaderMap::new()).await.unwrap();
        assert_eq!(caller, Caller { requester: ANONYMOUS.into(), admin: true });
        assert_eq!(caller.owner_filter(), None);
        let tenant = Caller { requester: "a".into(), admin: false };
        assert_eq!(tenant.owner_filter(), Some("a"));
    }

    #[test]
    fn only_the_health_service_is_open() {
        assert!(is_open("/grpc.health.v1.Health/Check"));
        assert!(!is_open("/proofjobs.v1.ProverService/Get"));
        assert!(!is_open("/cluster.ClusterService/Healthcheck"));
        assert!(is_open("/network.ProverNetwork/RequestProof"));
        assert!(!is_open("/networks/x"));
    }

    #[test]
    fn the_bearer_interceptor_sets_the_header_only_with_a_key() {
        use tonic::service::Interceptor;
        let with = Bearer::new(Some("pj_x")).unwrap().call(Request::new(())).unwrap();
        assert_eq!(with.metadata().get("authorization").unwrap(), "Bearer pj_x");
        let without = Bearer::new(None).unwrap().call(Request::new(())).unwrap();
        assert!(without.metadata().get("authorization").is_none());
    }
}
