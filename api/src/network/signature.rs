//! Who signed a prover-network request. sp1-sdk signs with EIP-191 personal-sign (a keccak-256
//! digest of "\x19Ethereum Signed Message:\n" ‖ length ‖ message) and sends 65 bytes r ‖ s ‖ v;
//! the signer's address is all it identifies callers by. The recovery byte comes as 0/1, 27/28,
//! or 54/55 (CreateArtifact adds 27 twice), so the parity is `v % 27` — never the EIP-155 rule a
//! general-purpose decoder applies to v ≥ 35, which would silently name another address.

use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use tiny_keccak::{Hasher, Keccak};

/// A 20-byte Ethereum-style address.
pub type Address = [u8; 20];

pub fn keccak256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Keccak::v256();
    for part in parts {
        hasher.update(part);
    }
    let mut out = [0u8; 32];
    hasher.finalize(&mut out);
    out
}

/// The EIP-191 digest of `message`.
pub fn personal_digest(message: &[u8]) -> [u8; 32] {
    let prefix = format!("\x19Ethereum Signed Message:\n{}", message.len());
    keccak256(&[prefix.as_bytes(), message])
}

/// The address whose key signed `message`, or why the signature cannot say.
pub fn recover(message: &[u8], signature: &[u8]) -> Result<Address, String> {
    let [rs @ .., v] = signature else { return Err("the signature is empty".into()) };
    if rs.len() != 64 {
        return Err(format!("the signature is {} bytes, not 65 (r, s, v)", signature.len()));
    }
    let odd = match v {
        0 | 27 | 54 => false,
        1 | 28 | 55 => true,
        _ => return Err(format!("the signature's recovery byte {v} is not one sp1-sdk sends (0, 1, 27, 28, 54, 55)")),
    };
    let signature = Signature::from_slice(rs).map_err(|e| format!("the signature is not a valid secp256k1 signature: {e}"))?;
    let id = RecoveryId::new(odd, false);
    let key = VerifyingKey::recover_from_prehash(&personal_digest(message), &signature, id)
        .map_err(|e| format!("no key recovers from the signature: {e}"))?;
    Ok(address_of(&key))
}

/// keccak-256 of the uncompressed public key without its 0x04 prefix, last 20 bytes.
pub fn address_of(key: &VerifyingKey) -> Address {
    let point = key.to_encoded_point(false);
    let hash = keccak256(&[&point.as_bytes()[1..]]);
    hash[12..].try_into().unwrap()
}

/// `0x`-prefixed lowercase hex, the way addresses are shown to operators.
pub fn show(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use k256::ecdsa::SigningKey;

    use super::*;

    /// Sign like sp1-sdk: r ‖ s ‖ (27 + parity), plus `extra` on v (27 more for CreateArtifact).
    fn sign(key: &SigningKey, message: &[u8], extra: u8) -> Vec<u8> {
        let (signature, id) = key.sign_prehash_recoverable(&personal_digest(message)).unwrap();
        let mut bytes = signature.to_bytes().to_vec();
        bytes.push(27 + id.to_byte() + extra);
        bytes
    }

    #[test]
    fn the_well_known_test_key_has_its_well_known_address() {
        // Hardhat/anvil account 0: a fixed point that pins the address derivation.
        let key =
            SigningKey::from_slice(&hex::decode("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80").unwrap()).unwrap();
        assert_eq!(show(&address_of(key.verifying_key())), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266");
    }

    #[test]
    fn every_recovery_byte_sp1_sdk_sends_names_the_signer() {
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let me = address_of(key.verifying_key());
        for message in [&b"create_artifact"[..], b"\x08\x01\x12\x20body"] {
            for extra in [0, 27] {
                assert_eq!(recover(message, &sign(&key, message, extra)).unwrap(), me, "v offset {extra}");
            }
            let mut low = sign(&key, message, 0);
            low[64] -= 27;
            assert_eq!(recover(message, &low).unwrap(), me, "v as 0/1");
        }
    }

    #[test]
    fn a_tampered_message_or_signature_does_not_name_the_signer() {
        let key = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let me = address_of(key.verifying_key());
        let signature = sign(&key, b"body", 0);
        assert_ne!(recover(b"bodz", &signature).ok(), Some(me));
        let mut flipped = signature.clone();
        flipped[64] ^= 1;
        assert_ne!(recover(b"body", &flipped).ok(), Some(me));
        let mut bad_v = signature.clone();
        bad_v[64] = 35;
        assert!(recover(b"body", &bad_v).unwrap_err().contains("recovery byte 35"));
        assert!(recover(b"body", &signature[..64]).unwrap_err().contains("not 65"));
        assert!(recover(b"body", &[]).is_err());
    }
}
