//! The task-runner's SP1 side, shared by the `task-runner` binary and its start-up benchmark:
//! which provers each stage builds (`provers`), the components SP1 is given (`components`), and
//! the disk cache of recursion keys behind them (`key_cache`).

pub mod components;
pub mod key_cache;
pub mod provers;
