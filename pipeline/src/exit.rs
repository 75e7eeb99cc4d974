//! The task-runner's exit codes (docs/ARCHITECTURE.md, "Exit codes"). The dispatcher's backends and the Kubernetes
//! podFailurePolicy both read a runner's fate from these numbers, so they live in one place.

/// The stage has no more work for this runner.
pub const DONE: i32 = 0;
/// Usage or configuration error: retrying on another node will not help.
pub const USAGE: i32 = 64;
/// Bad input (invalid ELF, undecodable stdin): fail the proof, never retry.
pub const BAD_INPUT: i32 = 65;
/// This node cannot run the stage (no GPU, too small): retry elsewhere, not counted as a failure.
pub const UNSUITABLE_NODE: i32 = 69;
/// Transient trouble (store unreachable, SIGTERM): tasks were handed back, retry with backoff.
pub const TRANSIENT: i32 = 75;
/// The runner itself broke (e.g. a CUDA error outside any task): a counted failure.
pub const INTERNAL: i32 = 70;

/// What the dispatcher does when a runner exits with `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    Done,
    FailProof,
    RetryNotCounted,
    RetryCounted,
}

pub fn classify(code: Option<i32>) -> ExitClass {
    match code {
        Some(DONE) => ExitClass::Done,
        Some(USAGE) | Some(BAD_INPUT) => ExitClass::FailProof,
        Some(UNSUITABLE_NODE) | Some(TRANSIENT) => ExitClass::RetryNotCounted,
        // Killed by a signal (no code) or crashed: a counted failure.
        _ => ExitClass::RetryCounted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_the_contract() {
        assert_eq!(classify(Some(0)), ExitClass::Done);
        assert_eq!(classify(Some(65)), ExitClass::FailProof);
        assert_eq!(classify(Some(64)), ExitClass::FailProof);
        assert_eq!(classify(Some(69)), ExitClass::RetryNotCounted);
        assert_eq!(classify(Some(75)), ExitClass::RetryNotCounted);
        assert_eq!(classify(Some(1)), ExitClass::RetryCounted);
        assert_eq!(classify(Some(INTERNAL)), ExitClass::RetryCounted);
        assert_eq!(classify(None), ExitClass::RetryCounted);
    }
}
