//! Proves one program through a prover network the way sp1-sdk's own examples do, then checks
//! the proof with the stock verifier and checks that a tampered copy is refused.
//!
//! usage: sp1-network-client <elf> <stdin u64> <core|compressed> <auction|hosted>
//! The RPC URL and key come from NETWORK_RPC_URL and NETWORK_PRIVATE_KEY, as for any sp1-sdk
//! user. Prints `proved <request id>` lines and `verified`, exits non-zero on any failure.

use std::time::Duration;

use sp1_sdk::{network::NetworkMode, Elf, ProveRequest, Prover, ProverClient, ProvingKey, SP1Stdin};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, elf, input, kind, mode] = &args[..] else {
        eprintln!("usage: sp1-network-client <elf> <stdin u64> <core|compressed> <auction|hosted>");
        std::process::exit(2);
    };
    let elf = std::fs::read(elf).expect("reading the ELF");
    let input: u64 = input.parse().expect("stdin is a u64");
    let mode = match mode.as_str() {
        "hosted" => NetworkMode::Reserved,
        _ => NetworkMode::Mainnet,
    };
    let client = ProverClient::builder().network_for(mode).build().await;
    let pk = client.setup(Elf::from(elf)).await.expect("setup");
    let mut stdin = SP1Stdin::new();
    stdin.write(&input);
    let request = client.prove(&pk, stdin).timeout(Duration::from_secs(900));
    let request = if kind == "compressed" { request.compressed() } else { request.core() };
    let proof = request.await.expect("proving on the network");
    println!("proved public_values={}", hex(proof.public_values.as_slice()));
    client.verify(&proof, pk.verifying_key(), None).expect("the network's proof verifies");
    let mut tampered = proof.clone();
    tampered.public_values = sp1_sdk::SP1PublicValues::from(&[0xffu8; 12][..]);
    assert!(client.verify(&tampered, pk.verifying_key(), None).is_err(), "a tampered proof was accepted");
    println!("verified");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
