//! store-bench: what our artifact client costs over the raw clients it wraps, measured in one run
//! against the Redis and the S3-compatible server `scripts/services.sh` starts.
//!
//! For each size it times a put and a get (bytes compared) through `ArtifactStore` and through
//! the raw `redis` crate (SET/GET) or raw `aws-sdk-s3` (put_object/get_object), the rounds
//! interleaved so both see the same machine. Then it measures 1 KiB reads while 100 MiB values
//! are being written on the same client, ours and raw. Payloads are random (incompressible):
//! our zstd pass then saves nothing and costs the most, the worst case for the ratio.
//!
//!   eval "$(scripts/services.sh start)"; store-bench [--sizes 1K,1M,32M,100M,600M] [--rounds 5]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use proofjobs_pipeline::artifacts::{s3::S3Tier, split_spill, ArtifactStore, StoreConfig};
use sp1_prover_types::{Artifact, ArtifactClient, ArtifactType};

#[derive(Parser)]
struct Args {
    /// Value sizes (K and M suffixes are KiB and MiB).
    #[arg(long, value_delimiter = ',', default_value = "1K,1M,32M,100M,600M")]
    sizes: Vec<String>,
    /// Rounds per size and client (values of 100 MiB and more get at most 3).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of 1 KiB reads under 100 MiB writes, per client.
    #[arg(long, default_value_t = 20)]
    contention_secs: u64,
}

fn parse_size(s: &str) -> Result<usize> {
    let (n, unit) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    Ok(n.parse::<usize>().with_context(|| format!("size {s:?}"))? * unit)
}

fn label(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

/// Incompressible bytes (splitmix64), different per call.
fn payload(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ size as u64;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// One way of putting and getting a value.
enum Client {
    Ours(ArtifactStore),
    RawRedis(redis::aio::MultiplexedConnection),
    RawS3(aws_sdk_s3::Client, String),
}

impl Client {
    async fn put(&mut self, id: &str, data: Vec<u8>) -> Result<()> {
        match self {
            Client::Ours(store) => store.upload_raw(&Artifact(id.to_string()), ArtifactType::UnspecifiedArtifactType, data).await,
            Client::RawRedis(conn) => Ok(redis::cmd("SET").arg(id).arg(data).query_async::<()>(conn).await?),
            Client::RawS3(s3, bucket) => {
                s3.put_object().bucket(bucket.as_str()).key(id).body(data.into()).send().await?;
                Ok(())
            }
        }
    }

    async fn get(&mut self, id: &str) -> Result<Vec<u8>> {
        match self {
            Client::Ours(store) => store.download_raw(&Artifact(id.to_string()), ArtifactType::UnspecifiedArtifactType).await,
            Client::RawRedis(conn) => Ok(redis::cmd("GET").arg(id).query_async(conn).await?),
            Client::RawS3(s3, bucket) => {
                let object = s3.get_object().bucket(bucket.as_str()).key(id).send().await?;
                Ok(object.body.collect().await?.into_bytes().to_vec())
            }
        }
    }

    async fn delete(&mut self, id: &str) -> Result<()> {
        match self {
            Client::Ours(store) => store.delete_ids(&[id.to_string()]).await,
            Client::RawRedis(conn) => Ok(redis::cmd("DEL").arg(id).query_async::<()>(conn).await?),
            Client::RawS3(s3, bucket) => {
                s3.delete_object().bucket(bucket.as_str()).key(id).send().await?;
                Ok(())
            }
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median (put, get) seconds of ours and of raw, one round trip each per round, alternating.
async fn interleaved(mut ours: Client, mut raw: Client, size: usize, rounds: usize) -> Result<((f64, f64), (f64, f64))> {
    let (mut ours_times, mut raw_times) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for round in 0..rounds {
        for (client, times, tag) in [(&mut ours, &mut ours_times, "ours"), (&mut raw, &mut raw_times, "raw")] {
            let (put, get) = time_round_trip(client, size, round as u64 + 1, tag).await?;
            times.0.push(put);
            times.1.push(get);
        }
    }
    Ok(((median(ours_times.0), median(ours_times.1)), (median(raw_times.0), median(raw_times.1))))
}

/// Put and get seconds of one `size`-byte value, checking the read.
async fn time_round_trip(client: &mut Client, size: usize, seed: u64, tag: &str) -> Result<(f64, f64)> {
    let data = payload(size, seed);
    let id = format!("bench-{tag}-{size}-{seed}-{}", uuid::Uuid::now_v7().simple());
    let started = Instant::now();
    client.put(&id, data.clone()).await.with_context(|| format!("{tag}: put of {}", label(size)))?;
    let put = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let back = client.get(&id).await.with_context(|| format!("{tag}: get of {}", label(size)))?;
    let get = started.elapsed().as_secs_f64();
    anyhow::ensure!(back == data, "{tag}: the {} value read back differs", label(size));
    client.delete(&id).await?;
    Ok((put, get))
}

/// Latencies of 1 KiB reads while another task writes 100 MiB values through the same client.
async fn reads_under_writes(reader: Client, writer: Client, secs: u64, tag: &str) -> Result<(usize, f64, f64, f64)> {
    let (mut reader, mut writer) = (reader, writer);
    let small = format!("bench-{tag}-small-{}", uuid::Uuid::now_v7().simple());
    reader.put(&small, payload(1024, 7)).await?;
    let stop = Instant::now() + Duration::from_secs(secs);
    let tag_owned = tag.to_string();
    let writes = tokio::spawn(async move {
        let mut n = 0u64;
        while Instant::now() < stop {
            let id = format!("bench-{tag_owned}-big-{n}");
            writer.put(&id, payload(100 << 20, n)).await?;
            writer.delete(&id).await?;
            n += 1;
        }
        anyhow::Ok(n)
    });
    let mut latencies = Vec::new();
    while Instant::now() < stop {
        let started = Instant::now();
        let back = reader.get(&small).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(back.len() == 1024, "{tag}: short read");
    }
    let big_writes = writes.await??;
    reader.delete(&small).await?;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!("  ({tag}: {big_writes} writes of 100 MiB during {} reads)", latencies.len());
    Ok((latencies.len(), pct(0.5), pct(0.99), *latencies.last().unwrap()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let redis_url = std::env::var("REDIS_URL").context("REDIS_URL (eval \"$(scripts/services.sh start)\")")?;
    let endpoint = std::env::var("PROOFJOBS_S3_ENDPOINT").context("PROOFJOBS_S3_ENDPOINT (scripts/services.sh start)")?;
    let prefix = format!("bench-{}/", uuid::Uuid::now_v7().simple());
    let spill_url = |threshold: usize| {
        format!(
            "{redis_url}/?spill=s3://proofjobs-bench/{prefix}&spill_endpoint={endpoint}&spill_threshold={threshold}&spill_path_style=true"
        )
    };
    // Ours as deployed (default spill threshold, 256 MiB) and ours with everything in S3.
    let (_, Some((s3_config, default_threshold))) = split_spill(&spill_url(256 << 20))? else { unreachable!() };
    let tier = S3Tier::connect(s3_config.clone()).await?;
    tier.ensure_bucket().await?;
    let ours = || async { ArtifactStore::connect(&spill_url(default_threshold), StoreConfig::default()).await };
    let ours_s3 = || async { ArtifactStore::connect(&spill_url(0), StoreConfig::default()).await };
    let raw_redis = || async { anyhow::Ok(redis::Client::open(redis_url.as_str())?.get_multiplexed_async_connection().await?) };
    let raw_s3 = || Client::RawS3(tier.sdk_client().clone(), s3_config.bucket.clone());

    println!("## put/get through ours and the raw client of the tier the value lands in (median of rounds)\n");
    println!("| size | tier | rounds | ours put | raw put | put ratio | ours get | raw get | get ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut worst: f64 = 0.0;
    for size in args.sizes.iter().map(|s| parse_size(s)).collect::<Result<Vec<_>>>()? {
        let rounds = if size >= 100 << 20 { args.rounds.min(3) } else { args.rounds };
        let mbps = |secs: f64| format!("{:.0} MiB/s", size as f64 / (1 << 20) as f64 / secs);
        let ms = |secs: f64| format!("{:.2} ms", secs * 1000.0);
        let show = |secs: f64| if size < 1 << 20 { ms(secs) } else { mbps(secs) };
        let mut row = |tier: &str, ours: (f64, f64), raw: (f64, f64)| {
            let (put_ratio, get_ratio) = (ours.0 / raw.0, ours.1 / raw.1);
            worst = worst.max(put_ratio).max(get_ratio);
            println!(
                "| {} | {tier} | {rounds} | {} | {} | {put_ratio:.2}× | {} | {} | {get_ratio:.2}× |",
                label(size),
                show(ours.0),
                show(raw.0),
                show(ours.1),
                show(raw.1)
            );
        };
        // Each value lands where the deployed default puts it; raw Redis cannot hold one over 512 MiB.
        let tier_name = if size > default_threshold { "S3" } else { "Redis" };
        let raw = if size > default_threshold { raw_s3() } else { Client::RawRedis(raw_redis().await?) };
        let (ours_times, raw_times) = interleaved(Client::Ours(ours().await?), raw, size, rounds).await?;
        row(tier_name, ours_times, raw_times);
        // Everything in S3 (threshold 0) against raw aws-sdk-s3, for the S3 path at every size.
        if size <= default_threshold {
            let (ours_times, raw_times) = interleaved(Client::Ours(ours_s3().await?), raw_s3(), size, rounds).await?;
            row("S3 (forced)", ours_times, raw_times);
        }
    }
    println!("\nworst ratio: {worst:.2}×\n");

    println!("## 1 KiB reads while 100 MiB values are written through the same client\n");
    let store = ours().await?;
    let ours_result = reads_under_writes(Client::Ours(store.clone()), Client::Ours(store), args.contention_secs, "ours").await?;
    let conn = raw_redis().await?;
    let raw_result = reads_under_writes(Client::RawRedis(conn.clone()), Client::RawRedis(conn), args.contention_secs, "raw").await?;
    println!("| client | reads | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, (n, p50, p99, max)) in [("ours (Redis)", ours_result), ("raw redis", raw_result)] {
        println!("| {name} | {n} | {p50:.2} ms | {p99:.2} ms | {max:.2} ms |");
    }
    Ok(())
}
