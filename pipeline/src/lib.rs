//! The pieces every proofjobs process shares: the stage model, the durable state in PostgreSQL
//! (proofs, tasks, runners) with the task bus built on it, the artifact stores, the runner's
//! exit-code contract, and the machine-local cache directory. api, dispatcher and task-runner each import these instead of restating them.

pub mod artifacts;
pub mod bus;
pub mod cache;
pub mod exit;
pub mod ids;
pub mod memory;
pub mod runner_env;
pub mod stage;
pub mod state;
