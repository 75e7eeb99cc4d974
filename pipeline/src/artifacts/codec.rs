//! How an artifact's bincode bytes are stored: compressed (artifacts are large and Redis memory
//! is the cluster's bottleneck) and checksummed (so a damaged value is reported instead of being
//! fed to the prover).
//!
//! The format is a standard zstd frame carrying zstd's own content checksum (XXH64 of the
//! original bytes, verified by the decoder). That is exactly what sp1-cluster clients read and
//! write (they store plain zstd), so its clients can read our outputs — the final proof above all
//! — and we read their uploads; their frames simply carry no checksum.

use anyhow::Result;

use super::StoreError;

/// Magic number opening every zstd frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Length of the zstd frame header before the first block, at most (for tests that damage a payload).
pub const HEADER_LEN: usize = 18;
/// zstd level used for writing: fast, artifacts are written once and read a few times.
pub const LEVEL: i32 = 1;
/// Values at least this big are (de)compressed on the blocking pool.
pub const BLOCKING_THRESHOLD: usize = 64 * 1024;

thread_local! {
    /// A compression context per thread, reused: building one per write costs more than a small
    /// value's compression.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Encodes `data` (already bincode-serialized) into a stored value: one frame, compressed in one
/// call straight into the output (no stream buffer to copy through), declaring its size.
pub fn encode(data: &[u8]) -> Result<Vec<u8>> {
    let compressed = COMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            let mut compressor = zstd::bulk::Compressor::new(LEVEL)?;
            compressor.include_checksum(true)?;
            compressor.include_contentsize(true)?;
            *slot = Some(compressor);
        }
        slot.as_mut().expect("set above").compress(data)
    });
    compressed.map_err(|e| StoreError::Other(format!("zstd compression: {e}")).into())
}

/// Decodes a stored value of artifact `id` back into the bytes given to [`encode`] (or, for a
/// sp1-cluster value, the bytes it compressed).
pub fn decode(id: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    decode_limited(id, bytes, None)
}

/// [`decode`], stopping with [`StoreError::TooLarge`] once the output would pass `limit` bytes:
/// a small value that expands without bound (a decompression bomb) costs at most `limit`.
pub fn decode_limited(id: &str, bytes: &[u8], limit: Option<usize>) -> Result<Vec<u8>> {
    decode_pieces(id, &[bytes], limit)
}

/// [`decode_limited`] of a value stored in pieces (Redis chunks, S3 ranges), read in order
/// without joining them first: a big value costs one pass over its bytes, not two.
pub fn decode_pieces(id: &str, pieces: &[&[u8]], limit: Option<usize>) -> Result<Vec<u8>> {
    let first = pieces.first().copied().unwrap_or_default();
    if !first.starts_with(&ZSTD_MAGIC) {
        return Err(StoreError::Corrupt(format!(
            "artifact {id}: not an artifact value (starts with {})",
            hex::encode(&first[..first.len().min(8)])
        ))
        .into());
    }
    // Any damage is reported as a checksum mismatch, whether zstd's checksum caught it or it
    // broke the frame itself.
    match decompress(pieces, limit) {
        Ok(Some(out)) => Ok(out),
        Ok(None) => Err(StoreError::TooLarge(format!("artifact {id} decodes to more than {} bytes", limit.unwrap_or_default())).into()),
        Err(e) => Err(StoreError::Corrupt(format!("checksum mismatch for artifact {id}: the stored value is damaged ({e})")).into()),
    }
}

/// [`encode`] on the blocking pool when `data` is big.
pub async fn encode_async(data: Vec<u8>) -> Result<Vec<u8>> {
    if data.len() < BLOCKING_THRESHOLD {
        return encode(&data);
    }
    tokio::task::spawn_blocking(move || encode(&data)).await.map_err(|e| StoreError::Other(format!("compression task failed: {e}")))?
}

/// [`decode_pieces`] on the blocking pool when the value is big.
pub async fn decode_async(id: &str, pieces: Vec<Vec<u8>>, limit: Option<usize>) -> Result<Vec<u8>> {
    let len: usize = pieces.iter().map(Vec::len).sum();
    if len < BLOCKING_THRESHOLD && limit.is_none_or(|l| l < BLOCKING_THRESHOLD) {
        return decode_pieces(id, &slices(&pieces), limit);
    }
    let id = id.to_string();
    tokio::task::spawn_blocking(move || decode_pieces(&id, &slices(&pieces), limit))
        .await
        .map_err(|e| StoreError::Other(format!("decompression task failed: {e}")))?
}

fn slices(pieces: &[Vec<u8>]) -> Vec<&[u8]> {
    pieces.iter().map(Vec::as_slice).collect()
}

/// Values that declare a decoded size up to this are decoded in one call on a reused context.
const ONE_SHOT_MAX: usize = 64 << 20;

thread_local! {
    /// A decoding context per thread: building one per read is most of what a small read costs.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// One call on the thread's reused context, for a value in one piece whose frame declares its
/// decoded size (as ours all do); None when the value is not like that or the call fails, and
/// the streaming decoder then has the last word (on a damaged value, its error).
fn decompress_one_shot(pieces: &[&[u8]], limit: Option<usize>) -> Option<Vec<u8>> {
    let [piece] = pieces else { return None };
    let size = usize::try_from(zstd::zstd_safe::get_frame_content_size(piece).ok()??).ok()?;
    if size > ONE_SHOT_MAX || limit.is_some_and(|limit| size > limit) {
        return None;
    }
    DECOMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        let mut out = Vec::with_capacity(size);
        let n = slot.as_mut()?.decompress_to_buffer(piece, &mut out).ok()?;
        (n == size).then_some(out)
    })
}

/// Decompresses one or more concatenated zstd frames spread over `pieces`; `None` when the
/// output passes `limit`.
fn decompress(pieces: &[&[u8]], limit: Option<usize>) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    if let Some(out) = decompress_one_shot(pieces, limit) {
        return Ok(Some(out));
    }
    // Pre-size from the first frame's declared size when it has one (capped: it is untrusted).
    let cap = limit.unwrap_or(1 << 32);
    let stored: usize = pieces.iter().map(|p| p.len()).sum();
    let hint = match zstd::zstd_safe::get_frame_content_size(pieces.first().copied().unwrap_or_default()) {
        Ok(Some(n)) => n.min(cap as u64) as usize,
        _ => stored.saturating_mul(2).min(cap),
    };
    let mut out = Vec::with_capacity(hint);
    let source = pieces.iter().fold(Box::new(std::io::empty()) as Box<dyn Read + '_>, |all, piece| Box::new(all.chain(*piece)));
    let decoder = zstd::stream::read::Decoder::new(source)?;
    match limit {
        // One byte past the limit tells "too large" from "exactly the limit".
        Some(limit) => {
            decoder.take(limit as u64 + 1).read_to_end(&mut out)?;
            if out.len() > limit {
                return Ok(None);
            }
        }
        None => {
            let mut decoder = decoder;
            decoder.read_to_end(&mut out)?;
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Incompressible pseudo-random bytes (xorshift64*), deterministic per seed.
    pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// A frame that does not declare its decoded size, as a streaming writer makes it.
    fn unsized_frame(data: &[u8]) -> Vec<u8> {
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        std::io::Write::write_all(&mut encoder, data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn round_trip_formats() {
        for data in [Vec::new(), b"x".to_vec(), vec![7u8; 1 << 20], random_bytes(300_000, 1)] {
            let enc = encode(&data).unwrap();
            assert_eq!(&enc[..4], ZSTD_MAGIC);
            // Content checksum flag (bit 2 of the frame header descriptor) is set.
            assert_ne!(enc[4] & 0x04, 0, "frame carries a checksum");
            assert_eq!(decode("a", &enc).unwrap(), data);
            // What any zstd reader (an sp1-cluster client) gets from our value.
            assert_eq!(zstd::decode_all(&enc[..]).unwrap(), data);
            // sp1-cluster values: plain zstd, default level, no checksum.
            let plain = zstd::encode_all(&data[..], 0).unwrap();
            assert_eq!(decode("a", &plain).unwrap(), data);
        }
        assert!(encode(&vec![0u8; 1 << 20]).unwrap().len() < 1000, "compresses");
    }

    #[test]
    fn detects_corruption() {
        let data = random_bytes(10_000, 2);
        let enc = encode(&data).unwrap();
        // A flipped payload byte (a raw zstd block: decodes, wrong content → checksum).
        let mut bad = enc.clone();
        bad[HEADER_LEN + 5_000] ^= 0x55;
        let e = decode("art_1", &bad).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch") && e.contains("art_1"), "{e}");
        // A flipped byte of the stored checksum itself (the frame's last 4 bytes).
        let mut bad = enc.clone();
        let n = bad.len();
        bad[n - 2] ^= 1;
        let e = decode("art_2", &bad).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch") && e.contains("art_2"), "{e}");
        // Damage that breaks a compressed frame.
        let mut bad = encode(&vec![3u8; 100_000]).unwrap();
        let n = bad.len();
        bad.truncate(n - 3);
        let e = decode("art_3", &bad).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
    }

    #[test]
    fn rejects_foreign_values() {
        for v in [&b""[..], b"hello world", &bincode::serialize(&vec![1u32, 2, 3]).unwrap()] {
            let e = decode("art_x", v).unwrap_err().to_string();
            assert!(e.contains("not an artifact value"), "{e}");
        }
    }

    #[tokio::test]
    async fn async_variants() {
        let data = random_bytes(1 << 20, 3);
        let enc = encode_async(data.clone()).await.unwrap();
        assert_eq!(decode_async("a", vec![enc], None).await.unwrap(), data);
    }

    #[tokio::test]
    async fn a_value_in_pieces_decodes_without_joining_and_damage_in_any_piece_is_caught() {
        let data = random_bytes(3 << 20, 9);
        let enc = encode(&data).unwrap();
        let pieces: Vec<Vec<u8>> = [&enc[..7], &enc[7..1_000_003], &enc[1_000_003..]].map(<[u8]>::to_vec).into();
        assert_eq!(decode_async("p", pieces.clone(), None).await.unwrap(), data);
        assert_eq!(decode_pieces("p", &slices(&pieces), Some(data.len())).unwrap(), data, "exactly the limit");
        assert!(crate::artifacts::is_too_large(&decode_pieces("p", &slices(&pieces), Some(data.len() - 1)).unwrap_err()));
        // A frame that does not declare its size, in pieces: the output grows as it decodes.
        let unsized_frame = unsized_frame(&data);
        let (a, b) = unsized_frame.split_at(unsized_frame.len() / 3);
        assert_eq!(decode_pieces("u", &[a, b], None).unwrap(), data);
        let mut damaged = pieces;
        damaged[2][10] ^= 1;
        let err = decode_async("p", damaged, None).await.unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn whole_values_of_a_declared_size_decode_in_one_call_and_the_rest_stream() {
        let data = random_bytes(200_000, 4);
        let enc = encode(&data).unwrap();
        for _ in 0..2 {
            assert_eq!(decompress_one_shot(&[&enc], None).as_deref(), Some(&data[..]), "context reused");
        }
        assert_eq!(decompress_one_shot(&[&enc], Some(data.len() - 1)), None, "over the limit: the streaming path refuses it");
        assert_eq!(decompress_one_shot(&[&enc[..10], &enc[10..]], None), None, "pieces stream");
        let mut bad = enc.clone();
        bad[HEADER_LEN + 5_000] ^= 0x55;
        assert_eq!(decompress_one_shot(&[&bad], None), None, "the one call checks zstd's checksum too");
        // A frame without a declared size (a streaming writer's) streams.
        let unsized_frame = unsized_frame(&data);
        assert_eq!(decompress_one_shot(&[&unsized_frame], None), None);
        assert_eq!(decode("u", &unsized_frame).unwrap(), data);
    }

    #[tokio::test]
    async fn a_decompression_bomb_stops_at_the_limit() {
        // 1 GiB of zeros compresses to a few tens of KiB; decoding it with a 1 MiB limit stops there.
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        std::io::copy(&mut std::io::Read::take(std::io::repeat(0), 1 << 30), &mut encoder).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
        let err = decode_async("bomb", vec![bomb.clone()], Some(1 << 20)).await.unwrap_err();
        assert!(err.to_string().contains("decodes to more than 1048576 bytes"), "{err}");
        assert!(crate::artifacts::is_too_large(&err));
        // Exactly at the limit is fine.
        let exact = encode(&vec![7u8; 4096]).unwrap();
        assert_eq!(decode_limited("x", &exact, Some(4096)).unwrap().len(), 4096);
        assert!(decode_limited("x", &exact, Some(4095)).is_err());
    }
}
