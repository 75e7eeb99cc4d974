fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .compile_protos(&["proto/proofjobs/v1/prover.proto", "proto/network/network.proto", "proto/artifact/artifact.proto"], &["proto"])?;
    Ok(())
}
