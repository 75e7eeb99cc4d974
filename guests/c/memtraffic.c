/*
 * memtraffic.c - memory-heavy SP1 guest.
 *
 * Why this exists: fibonacci.c touches almost no memory, so it exercises the
 * CPU chips only.  This guest makes the prover pay for loads, stores and many
 * distinct addresses (memory chips, memory initialisation/finalisation,
 * paging), with the amount set by the caller.
 *
 * stdin:  bincode u64 n (number of 64-bit words), then optionally bincode
 *         u64 rounds (default 1).  A missing or malformed n -> exit 3.
 * public: n_used || rounds || checksum, each u64 LE (24 bytes), where
 *         n_used = min(n, MEMTRAFFIC_MAX_WORDS).
 *
 * Work: fill n_used words (fresh heap memory above the image) with a
 * xorshift64 sequence, then `rounds` passes that each visit every word once
 * in a strided order (stride coprime to n_used) and read-modify-write it
 * together with a data-dependent partner word, then fold the buffer into a
 * checksum.  src/lib.rs has a bit-exact Rust model (memtraffic_reference);
 * keep the two in sync.
 */
#include "sp1_guest.h"

/* 2^24 words = 128 MiB of guest memory. */
#define MEMTRAFFIC_MAX_WORDS (1ull << 24)

#define GOLDEN 0x9E3779B97F4A7C15ull
#define ACC_SEED 0x243F6A8885A308D3ull
#define FNV_PRIME 0x00000100000001B3ull

static uint64_t gcd(uint64_t a, uint64_t b) {
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

int main(void) {
    uint64_t n_in, rounds_in;
    if (!sp1_read_u64(&n_in)) {
        sp1_eprint("memtraffic: expected u64 n (and optionally u64 rounds) on stdin\n");
        return SP1_EXIT_INVALID_HINT;
    }
    if (!sp1_read_u64(&rounds_in)) rounds_in = 1;
    /* Copies whose address is not taken, so they stay in registers. */
    const uint64_t n = n_in > MEMTRAFFIC_MAX_WORDS ? MEMTRAFFIC_MAX_WORDS : n_in;
    const uint64_t rounds = rounds_in;

    uint64_t *buf = sp1_alloc((size_t)(n * 8));

    /* Fill with xorshift64 (seed never 0 for n <= 2^24). */
    uint64_t x = GOLDEN + n;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = x;
    }

    /* Stride coprime to n, so one pass of n steps visits every index once. */
    uint64_t stride = 1;
    if (n > 2)
        for (stride = n / 2 + 1; gcd(stride, n) != 1; stride++) {
        }

    uint64_t acc = ACC_SEED;
    for (uint64_t r = 0; r < rounds && n != 0; r++) {
        uint64_t idx = r % n;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t a = buf[idx];
            uint64_t k = (acc >> 7) % n; /* data-dependent partner */
            uint64_t b = buf[k];
            buf[idx] = b ^ (a >> 1) ^ r;
            buf[k] = a + acc; /* wins if k == idx */
            acc = (acc ^ a) * GOLDEN + b;
            idx += stride;
            if (idx >= n) idx -= n;
        }
    }

    uint64_t checksum = acc;
    for (uint64_t i = 0; i < n; i++) checksum = (checksum ^ buf[i]) * FNV_PRIME;

    uint64_t out[3] = {n, rounds, checksum};
    sp1_commit(out, sizeof out);
    return 0;
}
