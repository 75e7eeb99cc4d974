//! What `proofctl bench --check` asks of every proof it timed: the stock sp1-sdk verifier accepts
//! it, refuses a copy with one public-value bit flipped, and its public values are the ones the
//! CPU executor computes for the same program and input. A fast proof that is wrong is no result.

use std::path::Path;

use anyhow::{Context, Result};
use sp1_sdk::{Prover, ProvingKey, SP1ProofWithPublicValues, SP1PublicValues};

pub struct ProofChecker {
    client: sp1_sdk::LightProver,
    pk: <sp1_sdk::LightProver as Prover>::ProvingKey,
    /// The public values the CPU executor produced (an execute-mode run of the pipeline).
    expected_public_values: Vec<u8>,
}

impl ProofChecker {
    pub async fn new(elf: &[u8], expected_public_values: Vec<u8>) -> Result<ProofChecker> {
        let client = sp1_sdk::ProverClient::builder().light().build().await;
        let pk = client.setup(elf.to_vec().into()).await.map_err(|e| anyhow::anyhow!("setup: {e}"))?;
        Ok(ProofChecker { client, pk, expected_public_values })
    }

    /// Checks a proof saved by `proofctl prove` (sp1-sdk's `SP1ProofWithPublicValues`).
    pub fn check_saved(&self, path: &Path) -> Result<()> {
        let proof = SP1ProofWithPublicValues::load(path).with_context(|| format!("loading {}", path.display()))?;
        self.check(&proof)
    }

    /// Checks a proof written as bincode of SP1's `ProofFromNetwork` (the GPU baseline's output).
    pub fn check_network_proof(&self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let proof: sp1_prover::worker::ProofFromNetwork = bincode::deserialize(&bytes).context("not a ProofFromNetwork")?;
        self.check(&SP1ProofWithPublicValues {
            proof: proof.proof,
            public_values: proof.public_values,
            sp1_version: proof.sp1_version,
            tee_proof: None,
        })
    }

    fn check(&self, proof: &SP1ProofWithPublicValues) -> Result<()> {
        let vk = self.pk.verifying_key();
        self.client.verify(proof, vk, None).map_err(|e| anyhow::anyhow!("the proof does NOT verify: {e}"))?;
        let mut bytes = proof.public_values.to_vec();
        anyhow::ensure!(!bytes.is_empty(), "the proof has no public values");
        bytes[0] ^= 1;
        let mut tampered = proof.clone();
        tampered.public_values = SP1PublicValues::from(bytes.as_slice());
        anyhow::ensure!(self.client.verify(&tampered, vk, None).is_err(), "a proof with tampered public values verified");
        anyhow::ensure!(
            proof.public_values.as_slice() == self.expected_public_values.as_slice(),
            "public values differ from the CPU executor's: 0x{} vs 0x{}",
            hex(proof.public_values.as_slice()),
            hex(&self.expected_public_values)
        );
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
