//! Decoding what sp1-sdk's network client signs. RequestProof's body has two schemas on one path:
//! tags 1-11 are shared, tag 12 is a bool in the reserved/hosted schema and the auction domain
//! (bytes) in the auction schema. The strategy field says which: AUCTION(3) is the auction
//! schema, every other strategy the reserved one.

use proofjobs_pipeline::stage::Mode;
use prost::Message;
use tonic::Status;

use super::proto::{RequestProofAuctionTail, RequestProofCommon, RequestProofReservedTail};
use crate::network::signature::keccak256;

pub const STRATEGY_AUCTION: i32 = 3;
/// The circuit version the SDK's requests name (`sp1-` + SP1_CIRCUIT_VERSION of 6.10).
pub const VERSION: &str = "sp1-v6.1.0";

/// A RequestProof body, whichever schema it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct ProofRequestBody {
    pub common: RequestProofCommon,
    pub stdin_private: bool,
}

pub fn decode_request_body(body: &[u8]) -> Result<ProofRequestBody, Status> {
    let bad = |e: prost::DecodeError| Status::invalid_argument(format!("RequestProof body does not decode: {e}"));
    let common = RequestProofCommon::decode(body).map_err(bad)?;
    let stdin_private = if common.strategy == STRATEGY_AUCTION {
        RequestProofAuctionTail::decode(body).map_err(bad)?.stdin_private
    } else {
        RequestProofReservedTail::decode(body).map_err(bad)?.stdin_private
    };
    Ok(ProofRequestBody { common, stdin_private })
}

/// The network request id of a body signed by `address`: the same for a retry of one request
/// (the SDK re-signs a retry with a new nonce, so the nonce is left out), different for a new
/// request (a new prove uploads a new stdin, so its stdin URI differs).
pub fn request_id(address: &[u8], body: &ProofRequestBody) -> [u8; 32] {
    let mut common = body.common.clone();
    common.nonce = 0;
    keccak256(&[b"proofjobs-network-request", address, &common.encode_to_vec(), &[body.stdin_private as u8]])
}

/// The pipeline mode of a network ProofMode.
pub fn mode(value: i32) -> Result<Mode, Status> {
    match value {
        1 => Ok(Mode::Core),
        2 => Ok(Mode::Compressed),
        3 => Ok(Mode::Plonk),
        4 => Ok(Mode::Groth16),
        other => Err(Status::invalid_argument(format!("proof mode {other} is not one of CORE(1), COMPRESSED(2), PLONK(3), GROTH16(4)"))),
    }
}

pub fn bytes32(what: &str, value: &[u8]) -> Result<[u8; 32], Status> {
    value.try_into().map_err(|_| Status::invalid_argument(format!("{what} is {} bytes, not 32", value.len())))
}

pub fn address(value: &[u8]) -> Result<[u8; 20], Status> {
    value.try_into().map_err(|_| Status::invalid_argument(format!("address is {} bytes, not 20", value.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(strategy: i32) -> RequestProofCommon {
        RequestProofCommon {
            nonce: 4,
            vk_hash: vec![1; 32],
            version: VERSION.into(),
            mode: 1,
            strategy,
            stdin_uri: "s".into(),
            deadline: 9,
            ..Default::default()
        }
    }

    #[test]
    fn tag_12_is_read_by_the_schema_the_strategy_names() {
        let mut reserved = common(1).encode_to_vec();
        reserved.extend(RequestProofReservedTail { stdin_private: true }.encode_to_vec());
        let decoded = decode_request_body(&reserved).unwrap();
        assert!(decoded.stdin_private);
        assert_eq!(decoded.common, common(1));

        let mut auction = common(STRATEGY_AUCTION).encode_to_vec();
        auction.extend(RequestProofAuctionTail { domain: vec![7; 32], stdin_private: false, ..Default::default() }.encode_to_vec());
        assert!(!decode_request_body(&auction).unwrap().stdin_private);
        // The same auction bytes read with the reserved schema fail: tag 12 has the wrong wire type.
        assert!(RequestProofReservedTail::decode(&auction[..]).is_err());
    }

    #[test]
    fn a_retry_keeps_its_request_id_and_a_new_stdin_changes_it() {
        let body = |nonce, stdin: &str| ProofRequestBody {
            common: RequestProofCommon { nonce, stdin_uri: stdin.into(), ..common(1) },
            stdin_private: false,
        };
        let me = [5u8; 20];
        assert_eq!(request_id(&me, &body(1, "a")), request_id(&me, &body(2, "a")));
        assert_ne!(request_id(&me, &body(1, "a")), request_id(&me, &body(1, "b")));
        assert_ne!(request_id(&me, &body(1, "a")), request_id(&[6u8; 20], &body(1, "a")));
    }
}
