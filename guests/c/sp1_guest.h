/*
 * sp1_guest.h - minimal freestanding runtime for proofjobs' hand-written
 * SP1 v6 guest programs (rv64im, no libc, no Rust toolchain needed).
 *
 * Why this exists: the cluster needs small guests with a predictable cycle
 * count (benchmarks, calibration, smoke tests) that build with nothing but
 * Debian clang + ld.lld.  This header holds the raw ecall wrappers; the
 * out-of-line parts (_start, SHA-256 of the public values, the commit/halt
 * sequence, a bump allocator) live in sp1_guest.c, linked into every guest.
 *
 * SP1 v6 guest ABI (see sp1-core-executor 6.10 src/minimal/{ecall,hint,write}.rs):
 *   ecall: t0 = syscall id, a0/a1/a2 = arguments, result (if any) in t0.
 *   The image is linked at 0x78000000 and the stack grows down from there.
 */
#ifndef PROOFJOBS_SP1_GUEST_H
#define PROOFJOBS_SP1_GUEST_H

#include <stddef.h>
#include <stdint.h>

/* Syscall ids (sp1-core-executor SyscallCode). */
#define SP1_SYS_HALT 0x00u
#define SP1_SYS_WRITE 0x02u
#define SP1_SYS_COMMIT 0x10u
#define SP1_SYS_COMMIT_DEFERRED_PROOFS 0x1Au
#define SP1_SYS_HINT_LEN 0xF0u
#define SP1_SYS_HINT_READ 0xF1u

/* File descriptors for WRITE (sp1-primitives consts::fd). */
#define SP1_FD_STDOUT 1u
#define SP1_FD_STDERR 2u
#define SP1_FD_PUBLIC_VALUES 13u

/* Exit codes, mirroring sp1-lib: 0 ok, 1 guest panic, 3 invalid prover hint. */
#define SP1_EXIT_OK 0u
#define SP1_EXIT_PANIC 1u
#define SP1_EXIT_INVALID_HINT 3u

/* HINT_LEN returns this when the stdin stream is exhausted. */
#define SP1_HINT_NONE UINT64_MAX

static inline uint64_t sp1_ecall0(uint64_t id) {
    register uint64_t t0 __asm__("t0") = id;
    __asm__ volatile("ecall" : "+r"(t0) : : "memory");
    return t0;
}

static inline uint64_t sp1_ecall2(uint64_t id, uint64_t a0, uint64_t a1) {
    register uint64_t t0 __asm__("t0") = id;
    register uint64_t r0 __asm__("a0") = a0;
    register uint64_t r1 __asm__("a1") = a1;
    __asm__ volatile("ecall" : "+r"(t0) : "r"(r0), "r"(r1) : "memory");
    return t0;
}

static inline uint64_t sp1_ecall3(uint64_t id, uint64_t a0, uint64_t a1, uint64_t a2) {
    register uint64_t t0 __asm__("t0") = id;
    register uint64_t r0 __asm__("a0") = a0;
    register uint64_t r1 __asm__("a1") = a1;
    register uint64_t r2 __asm__("a2") = a2;
    __asm__ volatile("ecall" : "+r"(t0) : "r"(r0), "r"(r1), "r"(r2) : "memory");
    return t0;
}

/* Length in bytes of the next stdin item, or SP1_HINT_NONE. */
static inline uint64_t sp1_hint_len(void) { return sp1_ecall0(SP1_SYS_HINT_LEN); }

/*
 * Copy the next stdin item to ptr.  ptr must be 8-byte aligned, len must be
 * exactly the item's length, and the executor writes len/8 + 1 whole u64
 * words (one extra word even when len % 8 == 0), into memory that the guest
 * has never touched.  Use sp1_read_item()/sp1_read_u64(), which get this right.
 */
static inline void sp1_hint_read(void *ptr, uint64_t len) {
    sp1_ecall2(SP1_SYS_HINT_READ, (uint64_t)(uintptr_t)ptr, len);
}

/* Raw WRITE to a file descriptor (does not feed the public-values hash). */
static inline void sp1_write(uint32_t fd, const void *buf, size_t len) {
    sp1_ecall3(SP1_SYS_WRITE, fd, (uint64_t)(uintptr_t)buf, len);
}

/* ---- sp1_guest.c ---------------------------------------------------- */

/* Entry point provided by each guest; its return value is the exit code. */
int main(void);

/* Bump allocator over fresh (never touched) memory above the image (_end).
 * Returns 16-byte aligned memory; never frees.  Halts with SP1_EXIT_PANIC
 * if the request cannot be satisfied. */
void *sp1_alloc(size_t bytes);

/* Read the next stdin item into freshly allocated memory.  Returns NULL and
 * leaves *len untouched when stdin is exhausted. */
void *sp1_read_item(uint64_t *len);

/* Read the next stdin item as a bincode u64 (8 LE bytes).  Returns 1 on
 * success, 0 when stdin is exhausted; halts with SP1_EXIT_INVALID_HINT if the
 * item is not exactly 8 bytes. */
int sp1_read_u64(uint64_t *out);

/* Append bytes to the public values (WRITE to fd 13) and to the running
 * SHA-256 that is committed at exit. */
void sp1_commit(const void *buf, size_t len);

/* Append a u64 to the public values as 8 little-endian bytes. */
void sp1_commit_u64(uint64_t v);

/* Write a message to stderr (debugging aid; not part of the public values). */
void sp1_eprint(const char *msg);

/* Commit sha256(public values) and the (empty) deferred-proof digest, then
 * HALT with exit_code.  This is what returning from main() does. */
__attribute__((noreturn)) void sp1_exit(uint32_t exit_code);

/* Freestanding replacements clang may emit calls to. */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);

#endif /* PROOFJOBS_SP1_GUEST_H */
