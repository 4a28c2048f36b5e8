//! Webhook tokens: random, shown once, stored only as a hash, compared in constant time.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// 32 random bytes: 256 bits, well above the 128 the design asks for.
const TOKEN_BYTES: usize = 32;

/// A new token, URL-safe so it can sit in a webhook path.
pub fn generate() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::getrandom(&mut bytes).expect("the OS random source is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keeps: the hex SHA-256 of the token. A fast hash is right here because the
/// token is random and long; there is nothing to brute-force.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `token` matches the stored hash, in time that does not depend on where they differ.
pub fn verify(token: &str, stored_hash: &str) -> bool {
    let candidate = hash(token);
    candidate.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_unique_and_verify_only_against_their_own_hash() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let h = hash(&a);
        assert!(verify(&a, &h));
        assert!(!verify(&b, &h));
        assert!(!verify("", &h));
    }
}
