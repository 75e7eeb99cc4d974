//! SP1 v6 guest programs written in C (`c/`), compiled by `build.rs` with
//! Debian clang + ld.lld and embedded here as ELF bytes.
//!
//! Why: the cluster needs guests with a known, tunable cost for tests,
//! benchmarks and calibration, without the SP1 Rust guest toolchain.
//!
//! Both guests take bincode `u64`s on stdin (`SP1Stdin::write(&n)`), write
//! little-endian `u64`s to the public values, and commit their SHA-256 the
//! way `sp1-zkvm` does.  The `*_public_values` functions compute the exact
//! public-value bytes on the host, for checking proofs/executions.

/// `fibonacci` guest. stdin: `n: u64`. public values: `n` LE ‖ `fib(n) mod 2^64` LE (16 bytes).
/// Missing/malformed input halts with exit code 3.
pub const FIBONACCI_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fibonacci.elf"));

/// `memtraffic` guest. stdin: `n: u64` (words), optional `rounds: u64` (default 1).
/// public values: `min(n, MEMTRAFFIC_MAX_WORDS)` ‖ `rounds` ‖ `checksum`, each u64 LE (24 bytes).
/// Missing/malformed `n` halts with exit code 3.
///
/// Cost (RISC-V instructions, measured by interpreting the Debian clang 14
/// build): about `n * (16 + 22 * rounds) + 9_700`, and `8 * n` bytes of fresh
/// memory (at most 128 MiB).
pub const MEMTRAFFIC_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/memtraffic.elf"));

/// Instructions per Fibonacci loop iteration.
///
/// The loop is hand-written assembly in `c/fibonacci.c` (`add; mv; mv; addi;
/// bnez`), so this does not depend on the compiler: 5 instructions, counted
/// in `llvm-objdump -d` of the built ELF.
pub const FIBONACCI_INSNS_PER_ITER: u64 = 5;

/// Instructions the `fibonacci` guest executes besides the loop, for `n >= 1`
/// (`n = 0` skips the loop and costs one less).
///
/// Estimate: 10_235. Counted by running the ELF built with Debian clang
/// 14.0.6 through an RV64IM interpreter that follows SP1's syscall ABI: the
/// total was exactly `10_235 + 5 * n` for every n tested (1 ..= 10_000).
/// Almost all of it is `_start`, the stdin read, and hashing the 16
/// public-value bytes (one SHA-256 block, computed in software). Another
/// compiler changes this constant but not the per-iteration cost. SP1's
/// global clock counts one cycle per executed instruction (sp1-core-executor
/// 6.10); check against the real SP1 executor before relying on it exactly.
pub const FIBONACCI_OVERHEAD_INSNS: u64 = 10_235;

/// The `n` to give the `fibonacci` guest so that it runs about `cycles`
/// instructions: `(cycles - FIBONACCI_OVERHEAD_INSNS) / FIBONACCI_INSNS_PER_ITER`,
/// or 0 when `cycles` is below the overhead. Non-decreasing in `cycles`.
pub fn fibonacci_n_for_cycles(cycles: u64) -> u64 {
    cycles.saturating_sub(FIBONACCI_OVERHEAD_INSNS) / FIBONACCI_INSNS_PER_ITER
}

/// The public values the `fibonacci` guest commits for input `n`.
pub fn fibonacci_public_values(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&n.to_le_bytes());
    out[8..].copy_from_slice(&fib_wrapping(n).to_le_bytes());
    out
}

/// fib(n) mod 2^64 by fast doubling (the identities hold in any commutative
/// ring, so wrapping arithmetic is exact mod 2^64).
fn fib_wrapping(n: u64) -> u64 {
    // (a, b) = (F(k), F(k+1)), k = the bits of n seen so far.
    let (mut a, mut b) = (0u64, 1u64);
    for bit in (0..64).rev() {
        let f2k = a.wrapping_mul(b.wrapping_mul(2).wrapping_sub(a));
        let f2k1 = a.wrapping_mul(a).wrapping_add(b.wrapping_mul(b));
        if (n >> bit) & 1 == 1 {
            (a, b) = (f2k1, f2k.wrapping_add(f2k1));
        } else {
            (a, b) = (f2k, f2k1);
        }
    }
    a
}

/// Largest `n` (in 64-bit words) the `memtraffic` guest uses; larger inputs
/// are clamped, and the clamped value is what it commits.
pub const MEMTRAFFIC_MAX_WORDS: u64 = 1 << 24;

/// The public values the `memtraffic` guest commits for `n` and `rounds`
/// (pass `rounds = 1` when only `n` is written to stdin).
///
/// A bit-exact model of `c/memtraffic.c`; it allocates `8 * min(n, 2^24)` bytes.
pub fn memtraffic_public_values(n: u64, rounds: u64) -> [u8; 24] {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    const ACC_SEED: u64 = 0x243F_6A88_85A3_08D3;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

    let n = n.min(MEMTRAFFIC_MAX_WORDS);
    let len = n as usize;

    let mut x = GOLDEN.wrapping_add(n);
    let mut buf: Vec<u64> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();

    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let mut stride = 1;
    if n > 2 {
        stride = n / 2 + 1;
        while gcd(stride, n) != 1 {
            stride += 1;
        }
    }

    let mut acc = ACC_SEED;
    if n != 0 {
        for r in 0..rounds {
            let mut idx = r % n;
            for _ in 0..n {
                let a = buf[idx as usize];
                let k = (acc >> 7) % n;
                let b = buf[k as usize];
                buf[idx as usize] = b ^ (a >> 1) ^ r;
                buf[k as usize] = a.wrapping_add(acc);
                acc = (acc ^ a).wrapping_mul(GOLDEN).wrapping_add(b);
                idx += stride;
                if idx >= n {
                    idx -= n;
                }
            }
        }
    }

    let checksum = buf.iter().fold(acc, |c, &w| (c ^ w).wrapping_mul(FNV_PRIME));

    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&n.to_le_bytes());
    out[8..16].copy_from_slice(&rounds.to_le_bytes());
    out[16..].copy_from_slice(&checksum.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PT_LOAD: u32 = 1;
    const PF_X: u32 = 1;
    const PF_W: u32 = 2;
    const PF_R: u32 = 4;
    const STACK_TOP: u64 = 0x7800_0000;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    struct Load {
        flags: u32,
        offset: u64,
        vaddr: u64,
        filesz: u64,
    }

    /// Checks the ELF header fields SP1 checks and returns the PT_LOAD headers.
    fn check_header(name: &str, elf: &[u8]) -> (u64, Vec<Load>) {
        assert_eq!(&elf[..4], b"\x7fELF", "{name}: ELF magic");
        assert_eq!(elf[4], 2, "{name}: ELFCLASS64");
        assert_eq!(elf[5], 1, "{name}: little endian");
        assert_eq!(u16_at(elf, 16), 2, "{name}: ET_EXEC");
        assert_eq!(u16_at(elf, 18), 0xF3, "{name}: EM_RISCV");
        let entry = u64_at(elf, 24);
        assert_eq!(entry % 4, 0, "{name}: entry {entry:#x} not 4-aligned");

        let phoff = u64_at(elf, 32) as usize;
        let phentsize = u16_at(elf, 54) as usize;
        let phnum = u16_at(elf, 56) as usize;
        assert!(phentsize >= 56 && phoff + phnum * phentsize <= elf.len(), "{name}: program headers");
        let loads = (0..phnum)
            .map(|i| &elf[phoff + i * phentsize..])
            .filter(|ph| u32_at(ph, 0) == PT_LOAD)
            .map(|ph| Load { flags: u32_at(ph, 4), offset: u64_at(ph, 8), vaddr: u64_at(ph, 16), filesz: u64_at(ph, 32) })
            .collect::<Vec<_>>();
        assert!(!loads.is_empty(), "{name}: no PT_LOAD");
        (entry, loads)
    }

    fn check_elf(name: &str, elf: &[u8]) {
        let (entry, loads) = check_header(name, elf);
        for l in &loads {
            assert!(l.vaddr >= STACK_TOP, "{name}: PT_LOAD at {:#x} below 0x78000000", l.vaddr);
            assert!(l.flags & PF_W == 0 || l.flags & PF_X == 0, "{name}: PT_LOAD at {:#x} is both writable and executable", l.vaddr);
            assert!(l.flags & PF_R != 0, "{name}: PT_LOAD at {:#x} not readable", l.vaddr);
        }

        // SP1 decodes every word of the executable segment and refuses the
        // program on anything it cannot decode (compressed instructions,
        // zero padding, CSR/fence). One code segment holding the entry point.
        let code: Vec<&Load> = loads.iter().filter(|l| l.flags & PF_X != 0).collect();
        assert_eq!(code.len(), 1, "{name}: expected exactly one executable PT_LOAD");
        let code = code[0];
        assert!(entry >= code.vaddr && entry < code.vaddr + code.filesz, "{name}: entry outside code");
        assert_eq!(code.filesz % 4, 0, "{name}: code size not a multiple of 4");
        let bytes = &elf[code.offset as usize..(code.offset + code.filesz) as usize];
        for (i, word) in bytes.chunks_exact(4).enumerate() {
            let w = u32::from_le_bytes(word.try_into().unwrap());
            // LUI AUIPC JAL JALR BRANCH LOAD STORE OP-IMM OP OP-IMM-32 OP-32, or exactly ECALL.
            let ok = matches!(w & 0x7F, 0x37 | 0x17 | 0x6F | 0x67 | 0x63 | 0x03 | 0x23 | 0x13 | 0x33 | 0x1B | 0x3B) || w == 0x0000_0073;
            assert!(ok, "{name}: word {w:#010x} at {:#x} is not an RV64IM instruction SP1 runs", code.vaddr + 4 * i as u64);
        }
    }

    #[test]
    fn fibonacci_elf_is_valid_sp1_guest() {
        check_elf("fibonacci", FIBONACCI_ELF);
    }

    #[test]
    fn memtraffic_elf_is_valid_sp1_guest() {
        check_elf("memtraffic", MEMTRAFFIC_ELF);
    }

    #[test]
    fn fibonacci_n_for_cycles_is_monotonic() {
        assert_eq!(fibonacci_n_for_cycles(0), 0);
        assert_eq!(fibonacci_n_for_cycles(FIBONACCI_OVERHEAD_INSNS), 0);
        for n in [1u64, 2, 1000, 123_456_789] {
            let cycles = FIBONACCI_OVERHEAD_INSNS + FIBONACCI_INSNS_PER_ITER * n;
            assert_eq!(fibonacci_n_for_cycles(cycles), n);
        }
        let mut prev = 0;
        let samples =
            (0..20_000u64).chain((0..64).map(|s| 1u64 << s)).chain((0..64).map(|s| (1u64 << s) - 1)).chain([u64::MAX - 1, u64::MAX]);
        let mut samples: Vec<u64> = samples.collect();
        samples.sort_unstable();
        for c in samples {
            let n = fibonacci_n_for_cycles(c);
            assert!(n >= prev, "not monotonic at cycles = {c}");
            prev = n;
        }
    }

    #[test]
    fn fibonacci_reference_values() {
        // Naive loop for small n.
        let (mut a, mut b) = (0u64, 1u64);
        for n in 0..300u64 {
            assert_eq!(fib_wrapping(n), a, "fib({n})");
            (a, b) = (b, a.wrapping_add(b));
        }
        // Values produced by running FIBONACCI_ELF in an RV64IM interpreter.
        for (n, fib) in [(94u64, 1_293_530_146_158_671_551u64), (10_000, 15_574_651_946_073_070_043)] {
            let pv = fibonacci_public_values(n);
            assert_eq!(pv[..8], n.to_le_bytes());
            assert_eq!(pv[8..], fib.to_le_bytes());
        }
    }

    #[test]
    fn memtraffic_reference_values() {
        // (n, rounds, checksum) produced by running MEMTRAFFIC_ELF in an RV64IM interpreter.
        let cases: [(u64, u64, u64); 9] = [
            (0, 1, 2_611_923_443_488_327_891),
            (1, 3, 16_823_228_288_620_821_324),
            (2, 2, 2_267_369_257_608_469_234),
            (3, 1, 15_189_948_029_034_660_230),
            (10, 4, 16_158_418_385_645_833_705),
            (1000, 1, 508_208_774_546_938_651),
            (1000, 3, 5_020_461_348_010_678_090),
            (4096, 2, 14_736_472_613_255_600_928),
            (100_000, 1, 16_193_917_112_381_219_297),
        ];
        for (n, rounds, checksum) in cases {
            let pv = memtraffic_public_values(n, rounds);
            assert_eq!(pv[..8], n.to_le_bytes());
            assert_eq!(pv[8..16], rounds.to_le_bytes());
            assert_eq!(pv[16..], checksum.to_le_bytes(), "n = {n}, rounds = {rounds}");
        }
        // Clamping: n above the limit behaves (and is reported) as the limit.
        let pv = memtraffic_public_values(u64::MAX, 0);
        assert_eq!(pv[..8], MEMTRAFFIC_MAX_WORDS.to_le_bytes());
    }
}
