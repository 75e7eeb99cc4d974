//! The SP1 prover components our runners build: SP1's own CPU provers, except that the
//! recursion prover (compose, deferred and shrink programs) goes through the key cache.
//! `SP1ProverComponents` is SP1's public extension point for exactly this kind of swap.

use std::sync::Arc;

use sp1_hypercube::prover::CpuShardProver;
use sp1_prover::{CpuSP1ProverComponents, SP1ProverComponents, WrapProverBuilder};

use crate::key_cache::CachedAirProver;

type Cpu = CpuSP1ProverComponents;
/// SP1's CPU prover for recursion programs, the one the cache wraps.
pub type CpuRecursionProver = <Cpu as SP1ProverComponents>::RecursionProver;

pub struct CachedCpuComponents;

impl SP1ProverComponents for CachedCpuComponents {
    type CoreProver = <Cpu as SP1ProverComponents>::CoreProver;
    type RecursionProver = CachedAirProver<CpuRecursionProver>;
    type WrapProver = <Cpu as SP1ProverComponents>::WrapProver;
    type WrapProverBuilder = CpuWrapProverBuilder;
}

/// Builds the wrap prover when a SNARK wrap first needs it, as SP1's CPU builder does.
pub struct CpuWrapProverBuilder;

impl WrapProverBuilder<CachedCpuComponents> for CpuWrapProverBuilder {
    fn build(&self) -> Arc<<CachedCpuComponents as SP1ProverComponents>::WrapProver> {
        let verifier = CachedCpuComponents::wrap_verifier();
        Arc::new(CpuShardProver::new(verifier.shard_verifier().clone()))
    }
}
