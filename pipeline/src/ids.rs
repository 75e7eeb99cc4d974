//! Identifiers. Proof ids are chosen by clients (sp1-cluster clients pick their own) or made here;
//! the short form is what appears in Kubernetes Job names, which allow only 63 DNS-label characters.

use uuid::Uuid;

pub fn new_proof_id() -> String {
    format!("proof_{}", Uuid::now_v7().simple())
}

pub fn new_task_id() -> String {
    format!("task_{}", Uuid::now_v7().simple())
}

pub fn new_runner_id() -> String {
    format!("runner_{}", Uuid::now_v7().simple())
}

/// An unguessable secret: 244 random bits (two v4 UUIDs, drawn from the operating system's
/// generator) as 64 hex digits. API keys, runner tokens and the network API's URL tokens.
pub fn new_secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// A DNS-label-safe, deterministic short form of a proof id: lowercase alphanumerics of the id's
/// tail plus a hash of the whole id, so two ids never collide in practice and restarts map the
/// same proof to the same name.
pub fn short_proof_id(proof_id: &str) -> String {
    let hash = blake3::hash(proof_id.as_bytes());
    let tail: String = proof_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("p{}{}", tail, &hash.to_hex()[..8])
}

/// A proof id supplied by a client must be usable as a key and in logs.
pub fn validate_client_proof_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!("proof id must be 1..=128 characters, got {}", id.len()));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c)) {
        return Err(format!("proof id {id:?} may contain only ASCII letters, digits and _-.:"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_dns_safe_and_stable() {
        let id = "cli_1732550000_7";
        let a = short_proof_id(id);
        assert_eq!(a, short_proof_id(id));
        assert!(a.len() <= 17);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(a, short_proof_id("cli_1732550000_8"));
    }

    #[test]
    fn client_ids_are_checked() {
        assert!(validate_client_proof_id("req_01abc").is_ok());
        assert!(validate_client_proof_id("").is_err());
        assert!(validate_client_proof_id("a b").is_err());
    }
}
