//! Hostile input against the real api (PostgreSQL, Redis): a decompression bomb named by an
//! sp1-cluster request, and programs whose headers claim a terabyte of memory, get their precise
//! status; nothing is stored, and the api's peak memory (VmHWM) barely moves.

use std::io::Write;

use proofjobs_api::proto::ListRequest;
use proofjobs_tests::*;
use sp1_prover_types::cluster::ProofRequestCreateRequest;
use tonic::Code;

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
    kb * 1024
}

/// A 64-bit RISC-V ELF whose one loadable segment claims `memsz` bytes (and has none in the file).
fn elf_claiming(memsz: u64) -> Vec<u8> {
    let mut elf = vec![0u8; 64 + 56];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4..7].copy_from_slice(&[2, 1, 1]); // 64-bit, little-endian, version 1
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&243u16.to_le_bytes()); // EM_RISCV
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers right after
    elf[52..54].copy_from_slice(&64u16.to_le_bytes());
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = &mut elf[64..];
    ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[16..24].copy_from_slice(&0x20_0000u64.to_le_bytes());
    ph[40..48].copy_from_slice(&memsz.to_le_bytes());
    elf
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decompression_bomb_and_absurd_elfs_are_refused_with_the_api_memory_bounded() {
    init_tracing();
    let cluster = Cluster::start(None, &[("PROOFJOBS_MAX_PROGRAM_BYTES", (16 << 20).to_string())]).await.unwrap();
    let api = cluster.api.child.id();
    let mut conn = redis_connection().await;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let mut admin = cluster.client().await;
    let mut cluster_client = cluster.cluster_client(None).await;
    admin.list(ListRequest::default()).await.unwrap();
    let before = peak_rss(api);

    // The bomb: a program value claiming 2 GiB (bincode length + zeros) in ~100 KiB of zstd,
    // stored the way an sp1-cluster client stores values.
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    encoder.write_all(&(2u64 << 30).to_le_bytes()).unwrap();
    std::io::copy(&mut std::io::Read::take(std::io::repeat(0), 2 << 30), &mut encoder).unwrap();
    let bomb = encoder.finish().unwrap();
    let (bomb_id, stdin_id) = (format!("artifact_bomb_{suffix}"), format!("artifact_s_{suffix}"));
    redis::cmd("SET").arg(&bomb_id).arg(&bomb).query_async::<()>(&mut conn).await.unwrap();
    put_like_sp1_cluster(&mut conn, &stdin_id, &fibonacci_stdin(10)).await;
    let request = |program: &str| ProofRequestCreateRequest {
        proof_id: format!("hostile_{}", uuid::Uuid::now_v7().simple()),
        program_artifact_id: program.into(),
        stdin_artifact_id: stdin_id.clone(),
        options_artifact_id: Some("1".into()),
        deadline: now() + 600,
        ..Default::default()
    };
    let refused = cluster_client.proof_request_create(request(&bomb_id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("limit of 16777216 bytes"), "{refused}");

    // Headers claiming a terabyte of memory, through both services.
    let absurd = elf_claiming(1 << 40);
    let refused = submit(&cluster, "execute", &absurd, &fibonacci_stdin(10), 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("claim more than"), "{refused}");
    let absurd_id = format!("artifact_absurd_{suffix}");
    put_like_sp1_cluster(&mut conn, &absurd_id, &bincode::serialize(&absurd).unwrap()).await;
    let refused = cluster_client.proof_request_create(request(&absurd_id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    // An ELF SP1's loader rejects (no instructions) is INVALID_ARGUMENT too, and the api lives on.
    let refused = submit(&cluster, "execute", &elf_claiming(4096), &fibonacci_stdin(10), 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");

    let after = peak_rss(api);
    eprintln!("api peak RSS {} MiB before, {} MiB after the bomb (2 GiB claimed) and the 1 TiB ELFs", before >> 20, after >> 20);
    assert!(after - before < 64 << 20, "the api's peak memory grew by {} MiB", (after - before) >> 20);
    assert!(admin.list(ListRequest::default()).await.unwrap().into_inner().proofs.is_empty(), "a refused request stored a proof");
    // Still serving: a good request goes through.
    submit(&cluster, "execute", FIBONACCI_ELF, &fibonacci_stdin(10), 0).await.unwrap();
    cluster.shutdown().await;
}
