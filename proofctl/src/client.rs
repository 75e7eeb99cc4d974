//! The gRPC client side of proofctl: submit with a streamed upload, watch with a progress bar per
//! stage, download the proof. Embedded mode talks to its in-process api through the same calls.
//! How to reach a cluster (API key, CA for https) is set once per process by [`configure`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use proofjobs_api::auth::{Bearer, ProverClient as ApiClient};
use proofjobs_api::proto::{
    prover_service_client::ProverServiceClient, submit_request::Part, GetProofRequest, Proof, QuoteResponse, SubmitHeader, SubmitRequest,
    WatchRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// The caller's credentials for a cluster's api.
#[derive(Default)]
pub struct Access {
    pub api_key: Option<String>,
    /// PEM CA certificate that signed the api's TLS certificate (for https:// endpoints).
    pub ca_file: Option<PathBuf>,
}

static ACCESS: OnceLock<Access> = OnceLock::new();

pub fn configure(access: Access) {
    let _ = ACCESS.set(access);
}

const CHUNK: usize = 1 << 20;

pub async fn connect(endpoint: &str) -> Result<ApiClient> {
    let access = ACCESS.get_or_init(Access::default);
    let mut channel = Channel::from_shared(endpoint.to_string())?.connect_timeout(Duration::from_secs(10));
    if endpoint.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &access.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        channel = channel.tls_config(tls)?;
    }
    let channel = channel.connect().await.with_context(|| format!("connecting to the proofjobs api at {endpoint}"))?;
    let bearer = Bearer::new(access.api_key.as_deref())?;
    Ok(ProverServiceClient::with_interceptor(channel, bearer).max_decoding_message_size(64 << 20))
}

pub struct Submission {
    pub mode: String,
    pub deadline: u64,
    pub cycle_limit: u64,
    pub idempotency_key: String,
    pub quote_id: String,
}

/// The Submit/Quote upload: the header, then program and stdin in chunks.
fn upload(s: Submission, program: Vec<u8>, stdin: Vec<u8>) -> impl futures::Stream<Item = SubmitRequest> {
    let mut messages = vec![SubmitRequest {
        part: Some(Part::Header(SubmitHeader {
            mode: s.mode,
            deadline: s.deadline,
            cycle_limit: s.cycle_limit,
            idempotency_key: s.idempotency_key,
            program_size: program.len() as u64,
            stdin_size: stdin.len() as u64,
            quote_id: s.quote_id,
        })),
    }];
    messages.extend(program.chunks(CHUNK).map(|c| SubmitRequest { part: Some(Part::ProgramChunk(c.to_vec())) }));
    messages.extend(stdin.chunks(CHUNK).map(|c| SubmitRequest { part: Some(Part::StdinChunk(c.to_vec())) }));
    futures::stream::iter(messages)
}

pub async fn submit(client: &mut ApiClient, s: Submission, program: Vec<u8>, stdin: Vec<u8>) -> Result<String> {
    let response = client.submit(upload(s, program, stdin)).await.map_err(status_error)?;
    Ok(response.into_inner().proof_id)
}

/// Executes the program on the cluster and returns the estimate for `s.mode`.
pub async fn quote(client: &mut ApiClient, s: Submission, program: Vec<u8>, stdin: Vec<u8>) -> Result<QuoteResponse> {
    Ok(client.quote(upload(s, program, stdin)).await.map_err(status_error)?.into_inner())
}

/// Follow a proof until it finishes, drawing a bar per stage (or log lines when `quiet`).
pub async fn watch(client: &mut ApiClient, proof_id: &str, quiet: bool) -> Result<Proof> {
    let mut stream = client.watch(WatchRequest { proof_id: proof_id.to_string() }).await.map_err(status_error)?.into_inner();
    let bars = MultiProgress::new();
    if quiet {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>11} [{bar:30}] {pos}/{len} {msg}").unwrap().progress_chars("=> ");
    let mut by_stage: HashMap<String, ProgressBar> = HashMap::new();
    let mut last = None;
    while let Some(update) = stream.message().await.map_err(status_error)? {
        for stage in &update.stages {
            let bar = by_stage.entry(stage.stage.clone()).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(stage.stage.clone());
                bar
            });
            bar.set_length(stage.total);
            bar.set_position(stage.done);
            bar.set_message(stage.state.clone());
        }
        if quiet {
            let summary: Vec<String> = update.stages.iter().map(|s| format!("{}={} {}/{}", s.stage, s.state, s.done, s.total)).collect();
            eprintln!("{} {} [{}]", update.id, update.status, summary.join(" "));
        }
        last = Some(update);
    }
    for bar in by_stage.values() {
        bar.finish();
    }
    last.context("the api closed the watch stream without an update")
}

/// How a proof came down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Streamed,
    DownloadUrl,
}

/// Writes proof `proof_id` to `out`: streamed by the api, or fetched from the download URL the
/// api offers for a large proof (streamed after all when the URL fails). Returns its length and
/// how it came.
pub async fn download_proof(client: &mut ApiClient, proof_id: &str, out: &Path) -> Result<(u64, Delivery)> {
    match get_proof(client, proof_id, true).await? {
        Got::Bytes(bytes) => return write_proof(proof_id, bytes, out).map(|n| (n, Delivery::Streamed)),
        Got::Url { url, size } => match fetch_url(&url, size, out).await {
            Ok(n) => return Ok((n, Delivery::DownloadUrl)),
            Err(e) => eprintln!("proofctl: fetching proof {proof_id} from its download URL failed ({e:#}); streaming it from the api"),
        },
    }
    match get_proof(client, proof_id, false).await? {
        Got::Bytes(bytes) => write_proof(proof_id, bytes, out).map(|n| (n, Delivery::Streamed)),
        Got::Url { .. } => bail!("the api sent a download URL for proof {proof_id} to a client that did not ask for one"),
    }
}

/// What GetProof answered.
enum Got {
    Bytes(Vec<u8>),
    Url { url: String, size: u64 },
}

async fn get_proof(client: &mut ApiClient, proof_id: &str, accept_url: bool) -> Result<Got> {
    let request = GetProofRequest { proof_id: proof_id.to_string(), accept_url };
    let mut stream = client.get_proof(request).await.map_err(status_error)?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        if !chunk.download_url.is_empty() {
            return Ok(Got::Url { url: chunk.download_url, size: chunk.size });
        }
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(Got::Bytes(bytes))
}

fn write_proof(proof_id: &str, bytes: Vec<u8>, out: &Path) -> Result<u64> {
    if bytes.is_empty() {
        bail!("the api returned an empty proof for {proof_id}");
    }
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(bytes.len() as u64)
}

/// Streams the body of `url` into `out`, which must come to `size` bytes; written beside `out`
/// first, so a failed download leaves whatever `out` held before.
async fn fetch_url(url: &str, size: u64, out: &Path) -> Result<u64> {
    use std::io::Write;
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(30)).read_timeout(Duration::from_secs(120)).build()?;
    let mut response = http.get(url).send().await?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("the download URL answered {status}: {}", body.chars().take(300).collect::<String>());
    }
    let part = out.with_file_name(format!("{}.part", out.file_name().and_then(|n| n.to_str()).unwrap_or("proof")));
    let written = async {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?);
        let mut written = 0u64;
        while let Some(piece) = response.chunk().await? {
            written += piece.len() as u64;
            anyhow::ensure!(written <= size, "the download is longer than the {size} bytes the api announced");
            file.write_all(&piece).with_context(|| format!("writing {}", part.display()))?;
        }
        file.flush()?;
        anyhow::ensure!(written == size, "the download came to {written} bytes where the api announced {size}");
        std::fs::rename(&part, out).with_context(|| format!("moving {} to {}", part.display(), out.display()))?;
        Ok(written)
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    written
}

pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}
