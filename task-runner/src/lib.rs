//! The task-runner's SP1 side, shared by the `task-runner` binary and its start-up benchmark:
//! which provers each stage builds (`provers`), the components SP1 is given (`components`), and
//! the disk cache of recursion keys behind them (`key_cache`), which prover proves (`engine`: SP1's
//! CPU or CUDA prover) and whether this node's GPU can take the work (`gpu`).

pub mod components;
pub mod engine;
pub mod gpu;
pub mod key_cache;
pub mod provers;
