//! The dispatcher turns proofs into running stages. The SP1 controller (running in the execute
//! stage) submits tasks to the durable bus; the dispatcher notices which stages of which proofs
//! have waiting work and starts a runner group for each through a [`Backend`] — child processes
//! locally, Kubernetes Jobs on a cluster — then watches them end, hands a lost runner's tasks
//! back, enforces deadlines and cancellation, and fails a proof whose runners keep failing. All
//! of its state is in PostgreSQL, so a restarted dispatcher picks up where the last one stopped.

pub mod backend;
pub mod kubernetes;
pub mod local;
pub mod plan;
pub mod reconcile;
pub mod sweep;

pub use backend::{Backend, Placement, RunnerSpec};
pub use plan::Policy;
pub use reconcile::Dispatcher;
