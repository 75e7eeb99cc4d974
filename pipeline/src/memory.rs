//! Peak memory of the current process, as runners report it at exit and benchmarks read it:
//! the prover's footprint is the number that decides which machine a stage needs.

/// The process's peak resident set (VmHWM), in KiB; 0 where /proc is unavailable.
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}
