/*
 * fibonacci.c - CPU-bound SP1 guest with a cycle count linear in its input.
 *
 * Why this exists: the cluster needs a guest whose cost can be dialled to a
 * target number of cycles (benchmarks, shard/split calibration, load tests)
 * without a Rust guest toolchain.  The hot loop is hand-written assembly so
 * its length does not depend on the compiler's unrolling decisions: exactly
 * FIBONACCI_INSNS_PER_ITER instructions per iteration (see src/lib.rs, which maps
 * a target cycle count to n).
 *
 * stdin:  one item, bincode u64 n (8 LE bytes).  Missing/malformed -> exit 3.
 * public: n (u64 LE) || fib(n) mod 2^64 (u64 LE), 16 bytes.
 */
#include "sp1_guest.h"

/* fib(0) = 0, fib(1) = 1, wrapping on overflow. */
static uint64_t fib(uint64_t n) {
    uint64_t a = 0, b = 1, t;
    if (n == 0) return 0;
    /* 5 instructions per iteration; keep in sync with FIBONACCI_INSNS_PER_ITER in src/lib.rs. */
    __asm__ volatile("1:\n\t"
                     "add  %[t], %[a], %[b]\n\t"
                     "mv   %[a], %[b]\n\t"
                     "mv   %[b], %[t]\n\t"
                     "addi %[n], %[n], -1\n\t"
                     "bnez %[n], 1b"
                     : [a] "+r"(a), [b] "+r"(b), [t] "=&r"(t), [n] "+r"(n));
    return a;
}

int main(void) {
    uint64_t n;
    if (!sp1_read_u64(&n)) {
        sp1_eprint("fibonacci: expected one u64 (n) on stdin\n");
        return SP1_EXIT_INVALID_HINT;
    }
    uint64_t out[2] = {n, fib(n)};
    sp1_commit(out, sizeof out);
    return 0;
}
