//! The kubelet's log endpoint, so `kubectl logs` works against fake nodes.
//!
//! The apiserver proxies `pods/log` to `https://<node address>:<kubeletEndpoint port>/
//! containerLogs/{namespace}/{pod}/{container}`. One HTTPS server (self-signed certificate made
//! at start; the apiserver does not verify kubelet certificates unless told to) serves every
//! node of the fleet from the `<work-dir>/logs` files. `follow=true` streams until the
//! container's process exits, which is what the registry of running containers is for.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::pod::log_file_name;

pub type Body = BoxBody<Bytes, io::Error>;

const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Log files and whether their container is still running.
#[derive(Clone)]
pub struct LogRegistry {
    dir: PathBuf,
    running: Arc<Mutex<HashMap<String, watch::Receiver<bool>>>>,
}

/// Held by the pod worker while its process runs; dropping it (or `finish`) ends followers.
pub struct RunningLog {
    tx: watch::Sender<bool>,
}

impl RunningLog {
    pub fn finish(&self) {
        self.tx.send_replace(false);
    }
}

impl Drop for RunningLog {
    fn drop(&mut self) {
        self.finish();
    }
}

impl LogRegistry {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, running: Arc::default() }
    }

    /// Marks the container's log as live until the returned guard is finished or dropped.
    pub fn start(&self, namespace: &str, pod: &str, container: &str) -> RunningLog {
        let (tx, rx) = watch::channel(true);
        let mut map = self.running.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, rx| *rx.borrow()); // forget finished containers
        map.insert(log_file_name(namespace, pod, container), rx);
        RunningLog { tx }
    }

    fn running(&self, file: &str) -> Option<watch::Receiver<bool>> {
        let map = self.running.lock().unwrap_or_else(|e| e.into_inner());
        map.get(file).filter(|rx| *rx.borrow()).cloned()
    }
}

/// Self-signed TLS for 127.0.0.1/localhost. Also returns the certificate, for tests.
pub fn tls_acceptor() -> Result<(TlsAcceptor, CertificateDer<'static>)> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .context("generate the log server certificate")?;
    let cert_der = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .context("TLS server config")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), cert_der))
}

/// Accept connections until `cancel` fires.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, registry: LogRegistry, cancel: CancellationToken) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(%err, "log server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let registry = registry.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(err) => {
                    tracing::debug!(%peer, %err, "log server TLS handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(handle(&req, &registry).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = cancel.cancelled() => {}
                res = conn => if let Err(err) = res {
                    tracing::debug!(%peer, %err, "log server connection ended with an error");
                }
            }
        });
    }
}

#[derive(Debug, Default, PartialEq)]
struct LogQuery {
    follow: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
    previous: bool,
}

fn parse_query(query: Option<&str>) -> LogQuery {
    let mut q = LogQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "follow" => q.follow = v == "true" || v == "1",
            "previous" => q.previous = v == "true" || v == "1",
            "tailLines" => q.tail_lines = v.parse().ok(),
            "limitBytes" => q.limit_bytes = v.parse().ok(),
            _ => {}
        }
    }
    q
}

/// Object names allowed in a log path (DNS subdomains); anything else cannot name a file of ours.
fn valid_segment(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(msg.into())).map_err(|never| match never {}).boxed())
        .expect("static response")
}

/// Routes one request.
pub async fn handle<B>(req: &Request<B>, registry: &LogRegistry) -> Response<Body> {
    let path = req.uri().path();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let Some(rest) = path.strip_prefix("/containerLogs/") else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET");
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let [namespace, pod, container] = parts[..] else {
        return text(StatusCode::NOT_FOUND, "expected /containerLogs/{namespace}/{pod}/{container}");
    };
    if ![namespace, pod, container].iter().all(|s| valid_segment(s)) {
        return text(StatusCode::NOT_FOUND, "no such container");
    }
    let query = parse_query(req.uri().query());
    if query.previous {
        return text(StatusCode::BAD_REQUEST, "previous terminated container not found (no restarts on fake nodes)");
    }
    let file = log_file_name(namespace, pod, container);
    let path = registry.dir.join(&file);
    let content = match tokio::fs::read(&path).await {
        Ok(c) => c,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return text(StatusCode::NOT_FOUND, format!("container {container} of pod {namespace}/{pod} has no logs on this node"));
        }
        Err(err) => return text(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    let start = query.tail_lines.map(|n| tail_start(&content, n)).unwrap_or(0);
    let running = if query.follow { registry.running(&file) } else { None };

    let body = match running {
        None => {
            let mut slice = &content[start..];
            if let Some(limit) = query.limit_bytes {
                slice = &slice[..slice.len().min(limit)];
            }
            Full::new(Bytes::copy_from_slice(slice)).map_err(|never| match never {}).boxed()
        }
        Some(rx) => {
            let (tx, out) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(16);
            let initial = Bytes::copy_from_slice(&content[start..]);
            let offset = content.len() as u64;
            tokio::spawn(follow(path, initial, offset, rx, tx));
            StreamBody::new(ReceiverStream::new(out)).boxed()
        }
    };
    Response::builder().status(StatusCode::OK).header("content-type", "text/plain; charset=utf-8").body(body).expect("log response")
}

/// Byte offset where the last `n` lines start.
fn tail_start(content: &[u8], n: usize) -> usize {
    if n == 0 {
        return content.len();
    }
    // Ignore a trailing newline: it ends the last line, it does not start a new one.
    let end = if content.last() == Some(&b'\n') { content.len() - 1 } else { content.len() };
    let mut seen = 0;
    for i in (0..end).rev() {
        if content[i] == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// Streams `initial`, then whatever is appended after `offset`, until the process has exited
/// and the file is drained (or the client went away).
async fn follow(
    path: PathBuf,
    initial: Bytes,
    mut offset: u64,
    mut running: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<Frame<Bytes>, io::Error>>,
) {
    if !initial.is_empty() && tx.send(Ok(Frame::data(initial))).await.is_err() {
        return;
    }
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(err) => {
            let _ = tx.send(Err(err)).await;
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Read the "still running" flag before draining, so nothing written before exit is lost.
        let alive = *running.borrow_and_update();
        if let Err(err) = file.seek(SeekFrom::Start(offset)).await {
            let _ = tx.send(Err(err)).await;
            return;
        }
        loop {
            match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    offset += n as u64;
                    if tx.send(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n])))).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            }
        }
        if !alive {
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = running.changed() => {}
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

/// Collects a body into bytes (tests and diagnostics).
#[cfg(test)]
async fn body_bytes(body: Body) -> Vec<u8> {
    let mut out = Vec::new();
    use tokio_stream::StreamExt;
    let mut stream = http_body_util::BodyStream::new(body);
    while let Some(frame) = stream.next().await {
        if let Ok(data) = frame.unwrap().into_data() {
            out.extend_from_slice(&data);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn get(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    fn registry_with(content: &str) -> (tempfile::TempDir, LogRegistry) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ns_pod-1_main.log"), content).unwrap();
        let reg = LogRegistry::new(dir.path().to_path_buf());
        (dir, reg)
    }

    #[test]
    fn query_and_tail() {
        assert_eq!(
            parse_query(Some("follow=true&tailLines=5&limitBytes=10&timestamps=false")),
            LogQuery { follow: true, tail_lines: Some(5), limit_bytes: Some(10), previous: false }
        );
        assert_eq!(parse_query(None), LogQuery::default());
        let c = b"a\nb\nc\n";
        assert_eq!(&c[tail_start(c, 1)..], b"c\n");
        assert_eq!(&c[tail_start(c, 2)..], b"b\nc\n");
        assert_eq!(&c[tail_start(c, 10)..], b"a\nb\nc\n");
        assert_eq!(&c[tail_start(c, 0)..], b"");
        let c = b"a\nb\nc";
        assert_eq!(&c[tail_start(c, 1)..], b"c");
    }

    #[tokio::test]
    async fn serves_whole_and_tailed_logs() {
        let (_dir, reg) = registry_with("one\ntwo\nthree\n");
        let resp = handle(&get("/containerLogs/ns/pod-1/main"), &reg).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_bytes(resp.into_body()).await, b"one\ntwo\nthree\n");
        let resp = handle(&get("/containerLogs/ns/pod-1/main?tailLines=2"), &reg).await;
        assert_eq!(body_bytes(resp.into_body()).await, b"two\nthree\n");
        let resp = handle(&get("/containerLogs/ns/pod-1/main?limitBytes=3"), &reg).await;
        assert_eq!(body_bytes(resp.into_body()).await, b"one");
        // Follow on a container that is not running returns what there is and ends.
        let resp = handle(&get("/containerLogs/ns/pod-1/main?follow=true"), &reg).await;
        assert_eq!(body_bytes(resp.into_body()).await, b"one\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn unknown_and_bad_paths_are_404() {
        let (_dir, reg) = registry_with("x");
        for uri in [
            "/containerLogs/ns/other/main",
            "/containerLogs/ns/pod-1",
            "/containerLogs/ns/../etc/passwd",
            "/containerLogs/NS/pod-1/main",
            "/metrics",
        ] {
            assert_eq!(handle(&get(uri), &reg).await.status(), StatusCode::NOT_FOUND, "{uri}");
        }
        assert_eq!(handle(&get("/healthz"), &reg).await.status(), StatusCode::OK);
        assert_eq!(handle(&get("/containerLogs/ns/pod-1/main?previous=true"), &reg).await.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn follow_streams_until_exit() {
        let (dir, reg) = registry_with("first\n");
        let guard = reg.start("ns", "pod-1", "main");
        let resp = handle(&get("/containerLogs/ns/pod-1/main?follow=true"), &reg).await;
        let collect = tokio::spawn(body_bytes(resp.into_body()));
        let path = dir.path().join("ns_pod-1_main.log");
        for line in ["second\n", "third\n"] {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(line.as_bytes()).unwrap();
        }
        assert!(!collect.is_finished(), "follow must wait for the process to exit");
        drop(guard);
        let got = tokio::time::timeout(Duration::from_secs(5), collect).await.unwrap().unwrap();
        assert_eq!(got, b"first\nsecond\nthird\n");
    }

    #[tokio::test]
    async fn https_end_to_end() {
        let (_dir, reg) = registry_with("hello over tls\n");
        let (acceptor, cert) = tls_acceptor().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, acceptor, reg, cancel.clone()));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /containerLogs/ns/pod-1/main HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("hello over tls\n"), "{response}");
        cancel.cancel();
        server.await.unwrap();
    }
}
