/*
 * sp1_guest.c - out-of-line half of the proofjobs SP1 v6 guest runtime.
 *
 * Why this exists: every guest needs the same boilerplate the Rust sp1-zkvm
 * crate normally provides: an entry point that sets up the stack, a SHA-256
 * of everything written to the public-values fd (SP1 checks it against the
 * COMMITted digest), the commit/halt sequence, and fresh memory for stdin
 * hints.  Linked into each guest next to the guest's own .c file.
 */
#include "sp1_guest.h"

/* ---- entry point ------------------------------------------------------ */

/*
 * _start: sp = 0x78000000 (STACK_TOP; the stack grows down below the image),
 * then run main() and exit through the commit/halt sequence.  gp is not set:
 * everything is built with -mno-relax, so nothing is gp-relative.
 */
__asm__(".pushsection .text._start,\"ax\",@progbits\n"
        ".globl _start\n"
        ".type _start,@function\n"
        ".p2align 2\n"
        "_start:\n"
        ".option push\n"
        ".option norelax\n"
        "    lui sp, 0x78000\n"
        "    call sp1_start_c\n"
        ".option pop\n"
        ".size _start, .-_start\n"
        ".popsection\n");

__attribute__((noreturn, used)) void sp1_start_c(void) { sp1_exit((uint32_t)main()); }

/* ---- freestanding libc bits ------------------------------------------- */

void *memcpy(void *dst, const void *src, size_t n) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    uint8_t *d = dst;
    while (n--) *d++ = (uint8_t)c;
    return dst;
}

void sp1_eprint(const char *msg) {
    size_t n = 0;
    while (msg[n]) n++;
    sp1_write(SP1_FD_STDERR, msg, n);
}

/* ---- bump allocator ------------------------------------------------- */

/*
 * Memory above _end is outside the ELF image, so it starts out
 * uninitialized; HINT_READ requires exactly that (the executor writes hint
 * words with clk 0, as if they were initial memory).  Nothing is ever freed
 * or reused.  The upper bound is the native executor's address space
 * (sp1-primitives MAX_JIT_LOG_ADDR = 40).
 */
extern char _end[];
#define SP1_HEAP_END (1ull << 40)
static uint64_t heap_next;

void *sp1_alloc(size_t bytes) {
    if (heap_next == 0) heap_next = ((uint64_t)(uintptr_t)_end + 15) & ~(uint64_t)15;
    uint64_t rounded = ((uint64_t)bytes + 15) & ~(uint64_t)15;
    if (rounded < bytes || rounded > SP1_HEAP_END - heap_next) {
        sp1_eprint("sp1_alloc: out of memory\n");
        sp1_exit(SP1_EXIT_PANIC);
    }
    void *p = (void *)(uintptr_t)heap_next;
    heap_next += rounded;
    return p;
}

/* ---- stdin ------------------------------------------------------------ */

void *sp1_read_item(uint64_t *len) {
    uint64_t n = sp1_hint_len();
    if (n == SP1_HINT_NONE) return NULL;
    /* HINT_READ stores n/8 + 1 whole words, see sp1_hint_read(). */
    void *buf = sp1_alloc((size_t)((n & ~(uint64_t)7) + 8));
    sp1_hint_read(buf, n);
    *len = n;
    return buf;
}

int sp1_read_u64(uint64_t *out) {
    uint64_t len = 0;
    const uint64_t *p = sp1_read_item(&len);
    if (p == NULL) return 0;
    if (len != 8) {
        sp1_eprint("sp1_read_u64: stdin item is not an 8-byte u64\n");
        sp1_exit(SP1_EXIT_INVALID_HINT);
    }
    *out = p[0];
    return 1;
}

/* ---- SHA-256 of the public values --------------------------------------- */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* Running state, initialised in .data so no setup code is needed. */
static uint32_t sha_h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                            0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
static uint8_t sha_buf[64];
static uint64_t sha_total; /* bytes hashed so far */

static inline uint32_t ror32(uint32_t x, unsigned r) { return (x >> r) | (x << (32 - r)); }

static void sha_block(const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = sha_h[0], b = sha_h[1], c = sha_h[2], d = sha_h[3];
    uint32_t e = sha_h[4], f = sha_h[5], g = sha_h[6], h = sha_h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25)) + ((e & f) ^ (~e & g)) +
                      sha_k[i] + w[i];
        uint32_t t2 = (ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    sha_h[0] += a;
    sha_h[1] += b;
    sha_h[2] += c;
    sha_h[3] += d;
    sha_h[4] += e;
    sha_h[5] += f;
    sha_h[6] += g;
    sha_h[7] += h;
}

static void sha_update(const uint8_t *p, size_t len) {
    while (len--) {
        sha_buf[sha_total++ % 64] = *p++;
        if (sha_total % 64 == 0) sha_block(sha_buf);
    }
}

/* ---- public values and exit ------------------------------------------- */

void sp1_commit(const void *buf, size_t len) {
    sp1_write(SP1_FD_PUBLIC_VALUES, buf, len);
    sha_update(buf, len);
}

void sp1_commit_u64(uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
    sp1_commit(b, 8);
}

void sp1_exit(uint32_t exit_code) {
    /* SHA-256 padding: 0x80, zeros to 56 mod 64, then the bit length (BE). */
    uint64_t bits = sha_total * 8;
    uint8_t pad = 0x80;
    sha_update(&pad, 1);
    pad = 0;
    while (sha_total % 64 != 56) sha_update(&pad, 1);
    for (int i = 7; i >= 0; i--) {
        uint8_t byte = (uint8_t)(bits >> (8 * i));
        sha_update(&byte, 1);
    }
    /* Digest bytes are sha_h[i] big-endian; SP1 wants word i as the
     * little-endian u32 of digest bytes [4i, 4i+4), i.e. the byte swap. */
    for (uint64_t i = 0; i < 8; i++) {
        uint32_t x = sha_h[i];
        uint32_t le = (x >> 24) | ((x >> 8) & 0xff00u) | ((x << 8) & 0xff0000u) | (x << 24);
        sp1_ecall2(SP1_SYS_COMMIT, i, le);
    }
    /* No deferred proofs: the deferred digest is eight zero words. */
    for (uint64_t i = 0; i < 8; i++) sp1_ecall2(SP1_SYS_COMMIT_DEFERRED_PROOFS, i, 0);
    sp1_ecall2(SP1_SYS_HALT, exit_code, 0);
    for (;;) {
    }
}
