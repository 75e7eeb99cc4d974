//! The api: proofjobs' own `ProverService`, sp1-cluster's `ClusterService` and (when configured)
//! the prover-network API that stock sp1-sdk speaks, all over the same state. It validates and
//! stores what clients send, creates the proof's first task, and reports progress; it never runs
//! proving work itself.

pub mod auth;
pub mod cluster;
pub mod downloads;
pub mod health;
pub mod intake;
pub mod network;
pub mod program_check;
pub mod quote;
pub mod server;
pub mod service;

pub mod proto {
    tonic::include_proto!("proofjobs.v1");
}

pub use intake::{Intake, Limits};
