//! Flow secrets at rest: AES-256-GCM under one master key, bound to the flow and the name.
//!
//! Each value is sealed with a fresh random 96-bit nonce. The associated data is the flow id and
//! the secret's name, so a ciphertext copied to another flow or another name in the store fails
//! to open instead of handing its value to the wrong pump. Beside each ciphertext the store keeps
//! the id of the key that sealed it (the first 8 bytes of the key's SHA-256), so a server with
//! the wrong key says so, naming both ids, rather than reporting a generic decryption failure.
//!
//! Key material lives in [`Zeroizing`] buffers and is wiped when dropped; [`MasterKey`]'s
//! `Debug` shows only the key id. Values are never put into errors.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Bytes of a master key: AES-256.
pub const KEY_BYTES: usize = 32;
/// Bytes of a GCM nonce.
const NONCE_BYTES: usize = 12;
/// Largest secret value accepted. Linux refuses a single environment string over 128 KiB, and a
/// pump's whole environment shares one limit with its arguments, so values stay well below.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Most secrets one flow may have.
pub const MAX_SECRETS_PER_FLOW: usize = 100;
/// Longest secret name.
pub const MAX_NAME_BYTES: usize = 128;

/// How to make a key, for messages that tell the operator to configure one.
pub const HOW_TO_MAKE_A_KEY: &str = "make one with `pumphouse secrets new-key > master.key` and start the server with --master-key-file master.key (or put the key in PUMPHOUSE_MASTER_KEY)";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    // The io error is in the message rather than chained as a source, so it is printed once.
    #[error("cannot read the master key file {path}: {reason}; {HOW_TO_MAKE_A_KEY}")]
    Read {
        path: String,
        reason: std::io::Error,
    },
    // The text itself is never quoted: a near-miss key is still most of a key.
    #[error("the master key{from} is not base64 of 32 bytes ({detail}); {HOW_TO_MAKE_A_KEY}")]
    Malformed { from: String, detail: String },
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{name}` of flow {flow_id} was sealed with master key {sealed_with}, but this server has key {have}; if the key was rotated, run `pumphouse secrets re-encrypt --store URL --from-key-file OLD --to-key-file NEW`, or start the server with the key that sealed it")]
    WrongKey {
        flow_id: String,
        name: String,
        sealed_with: String,
        have: String,
    },
    #[error("secret `{name}` of flow {flow_id} does not decrypt under master key {key_id}: its stored ciphertext was altered or belongs to another flow or name; set it again with `pumphouse flow secret set`")]
    Tampered {
        flow_id: String,
        name: String,
        key_id: String,
    },
    #[error("secret `{name}` of flow {flow_id} decrypts to something that is not UTF-8 text without NUL bytes; set it again with `pumphouse flow secret set`")]
    NotText { flow_id: String, name: String },
}

/// Why a secret's name or value was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidSecret {
    #[error("`{0}` is not a valid secret name; use letters, digits and _, not starting with a digit, at most 128 characters (it becomes an environment variable)")]
    BadName(String),
    #[error(
        "`{0}` is set by pumphouse itself (see docs/pump-contract.md); choose another secret name"
    )]
    ReservedName(String),
    #[error("`{0}` {1}")]
    LoaderVariable(String, String),
    #[error("the secret value is empty; send the value itself as the request body")]
    Empty,
    #[error("the secret value is {0} bytes; at most {MAX_VALUE_BYTES} are accepted")]
    TooLarge(usize),
    #[error("the secret value is not UTF-8 text, or holds a NUL byte; an environment variable cannot carry it (base64-encode binary values)")]
    NotText,
}

/// Checks a secret's name: it becomes an environment variable of the pump, so the names a
/// manifest's `env` may not use (how the pump program is loaded or found) are refused too.
/// `backend` is the server's backend name.
pub fn check_name(name: &str, backend: Option<&str>) -> Result<(), InvalidSecret> {
    let valid = name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(InvalidSecret::BadName(name.to_string()));
    }
    if pumphouse_pump::env::RESERVED.contains(&name) {
        return Err(InvalidSecret::ReservedName(name.to_string()));
    }
    if let Some(why) = crate::manifest::loader_variable(name, backend) {
        return Err(InvalidSecret::LoaderVariable(name.to_string(), why));
    }
    Ok(())
}

/// Checks a secret's value: non-empty, bounded, and something an environment can hold.
pub fn check_value(value: &[u8]) -> Result<(), InvalidSecret> {
    if value.is_empty() {
        return Err(InvalidSecret::Empty);
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(InvalidSecret::TooLarge(value.len()));
    }
    if std::str::from_utf8(value).is_err() || value.contains(&0) {
        return Err(InvalidSecret::NotText);
    }
    Ok(())
}

/// A sealed value as the store keeps it; nonce and ciphertext in standard base64, so both
/// stores hold it as TEXT.
#[derive(Clone, PartialEq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

impl fmt::Debug for Sealed {
    // Ciphertext is harmless, but there is no reason for it to reach a log either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The master key. Cloning is deliberate (`Arc` it); its bytes are wiped on drop.
pub struct MasterKey {
    cipher: Aes256Gcm,
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

impl MasterKey {
    /// A key from its base64 text (standard alphabet; surrounding whitespace ignored). `from`
    /// says where the text came from, for the error message.
    pub fn from_base64(text: &str, from: &str) -> Result<MasterKey, KeyError> {
        let malformed = |detail: String| KeyError::Malformed {
            from: from.to_string(),
            detail,
        };
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| malformed("not valid base64".into()))?,
        );
        let key: Zeroizing<[u8; KEY_BYTES]> = Zeroizing::new(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| malformed(format!("it decodes to {} bytes", bytes.len())))?,
        );
        Ok(MasterKey::from_bytes(&key))
    }

    /// A key read from a file holding its base64 text.
    pub fn from_file(path: &Path) -> Result<MasterKey, KeyError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|reason| KeyError::Read {
                    path: path.display().to_string(),
                    reason,
                })?,
            );
        MasterKey::from_base64(&text, &format!(" in {}", path.display()))
    }

    fn from_bytes(key: &[u8; KEY_BYTES]) -> MasterKey {
        let digest = Sha256::digest(key);
        MasterKey {
            cipher: Aes256Gcm::new(key.into()),
            id: digest.iter().take(8).map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// A new random key as base64 text, for `pumphouse secrets new-key`.
    pub fn generate_base64() -> Zeroizing<String> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        getrandom::getrandom(key.as_mut()).expect("the OS random source is available");
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.as_ref()))
    }

    /// Which key this is: 16 hex digits, safe to show.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `value` for secret `name` of flow `flow_id`.
    pub fn seal(&self, flow_id: &str, name: &str, value: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::getrandom(&mut nonce).expect("the OS random source is available");
        let aad = associated_data(flow_id, name);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of a bounded value cannot fail");
        let b64 = base64::engine::general_purpose::STANDARD;
        Sealed {
            key_id: self.id.clone(),
            nonce: b64.encode(nonce),
            ciphertext: b64.encode(ciphertext),
        }
    }

    /// Opens what [`MasterKey::seal`] sealed for the same flow and name.
    pub fn open(
        &self,
        flow_id: &str,
        name: &str,
        sealed: &Sealed,
    ) -> Result<Zeroizing<String>, SecretError> {
        if sealed.key_id != self.id {
            return Err(SecretError::WrongKey {
                flow_id: flow_id.to_string(),
                name: name.to_string(),
                sealed_with: sealed.key_id.clone(),
                have: self.id.clone(),
            });
        }
        let tampered = || SecretError::Tampered {
            flow_id: flow_id.to_string(),
            name: name.to_string(),
            key_id: self.id.clone(),
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce = b64.decode(&sealed.nonce).map_err(|_| tampered())?;
        let ciphertext = b64.decode(&sealed.ciphertext).map_err(|_| tampered())?;
        if nonce.len() != NONCE_BYTES {
            return Err(tampered());
        }
        let aad = associated_data(flow_id, name);
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| tampered())?,
        );
        if plain.contains(&0) {
            return Err(SecretError::NotText {
                flow_id: flow_id.to_string(),
                name: name.to_string(),
            });
        }
        match std::str::from_utf8(&plain) {
            Ok(text) => Ok(Zeroizing::new(text.to_string())),
            Err(_) => Err(SecretError::NotText {
                flow_id: flow_id.to_string(),
                name: name.to_string(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReencryptError {
    #[error("--from-key-file and --to-key-file hold the same key ({0}); give the new key as --to-key-file")]
    SameKey(String),
    #[error("{0}; nothing was changed")]
    Store(#[from] crate::store::StoreError),
    #[error("secret `{name}` of flow {flow_id} is sealed with master key {key_id}, which is neither the old key ({from}) nor the new one ({to}); nothing was changed. Give the key that sealed it as --from-key-file")]
    UnknownKey {
        flow_id: String,
        name: String,
        key_id: String,
        from: String,
        to: String,
    },
    #[error("{0}; nothing was changed")]
    Open(#[from] SecretError),
}

/// What a re-encryption did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reencrypted {
    /// Secrets moved from the old key to the new one.
    pub resealed: usize,
    /// Secrets already under the new key (set after a server switched keys, or a second run).
    pub already: usize,
}

/// Re-seals every secret in the store from `from` to `to`, in one transaction: every secret is
/// opened and sealed again (fresh nonce) or, on the first that cannot be, nothing changes.
pub async fn reencrypt(
    store: &crate::store::Store,
    from: &MasterKey,
    to: &MasterKey,
) -> Result<Reencrypted, ReencryptError> {
    if from.id() == to.id() {
        return Err(ReencryptError::SameKey(from.id().to_string()));
    }
    let mut rewrite = store.rewrite_secrets().await?;
    let mut done = Reencrypted {
        resealed: 0,
        already: 0,
    };
    for mut secret in rewrite.all().await? {
        if secret.sealed.key_id == to.id() {
            // Opened, not just counted: a damaged row is better found now than at a pump start.
            to.open(&secret.flow_id, &secret.name, &secret.sealed)?;
            done.already += 1;
            continue;
        }
        if secret.sealed.key_id != from.id() {
            return Err(ReencryptError::UnknownKey {
                flow_id: secret.flow_id,
                name: secret.name,
                key_id: secret.sealed.key_id,
                from: from.id().to_string(),
                to: to.id().to_string(),
            });
        }
        let value = from.open(&secret.flow_id, &secret.name, &secret.sealed)?;
        secret.sealed = to.seal(&secret.flow_id, &secret.name, value.as_bytes());
        rewrite.replace(&secret).await?;
        done.resealed += 1;
    }
    rewrite.commit().await?;
    Ok(done)
}

/// Binds a ciphertext to its place: a version tag, the flow id and the name, NUL-separated
/// (neither a UUID nor a valid name holds a NUL, so no two places share these bytes).
fn associated_data(flow_id: &str, name: &str) -> Vec<u8> {
    format!("pumphouse-secret-v1\0{flow_id}\0{name}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64(), "").unwrap()
    }

    #[test]
    fn sealed_values_open_only_in_their_place() {
        let k = key();
        let sealed = k.seal("flow-a", "API_KEY", b"v4lue");
        assert_eq!(&*k.open("flow-a", "API_KEY", &sealed).unwrap(), "v4lue");
        assert!(matches!(
            k.open("flow-b", "API_KEY", &sealed),
            Err(SecretError::Tampered { .. })
        ));
        assert!(matches!(
            k.open("flow-a", "OTHER", &sealed),
            Err(SecretError::Tampered { .. })
        ));
    }

    #[test]
    fn each_seal_has_its_own_nonce() {
        let k = key();
        let a = k.seal("f", "N", b"same");
        let b = k.seal("f", "N", b"same");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn another_key_is_named_not_tried() {
        let (a, b) = (key(), key());
        let sealed = a.seal("f", "N", b"x");
        let err = b.open("f", "N", &sealed).unwrap_err().to_string();
        assert!(err.contains(a.id()) && err.contains(b.id()), "{err}");
        assert!(err.contains("pumphouse secrets re-encrypt"), "{err}");
    }

    #[test]
    fn a_flipped_bit_is_refused() {
        let k = key();
        let mut sealed = k.seal("f", "N", b"value");
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut raw = b64.decode(&sealed.ciphertext).unwrap();
        raw[0] ^= 1;
        sealed.ciphertext = b64.encode(raw);
        assert!(matches!(
            k.open("f", "N", &sealed),
            Err(SecretError::Tampered { .. })
        ));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64_and_are_not_quoted() {
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let err = MasterKey::from_base64(&short, " in k.key")
            .unwrap_err()
            .to_string();
        assert!(err.contains("16 bytes") && !err.contains(&short), "{err}");
        assert!(MasterKey::from_base64("not base64!", "").is_err());
        let k = key();
        assert_eq!(
            format!("{k:?}"),
            format!("MasterKey {{ id: {:?} }}", k.id())
        );
    }

    #[test]
    fn names_and_values_are_checked() {
        assert!(check_name("STRIPE_KEY", None).is_ok());
        assert!(check_name("_x1", None).is_ok());
        for bad in ["", "1X", "A-B", "A B", &"A".repeat(129)] {
            assert!(
                matches!(check_name(bad, None), Err(InvalidSecret::BadName(_))),
                "{bad}"
            );
        }
        assert_eq!(
            check_name("REDIS_URL", None),
            Err(InvalidSecret::ReservedName("REDIS_URL".into()))
        );
        // What the dynamic linker reads, on every backend; PATH where pumps are our processes.
        assert!(matches!(
            check_name("LD_PRELOAD", Some("docker")),
            Err(InvalidSecret::LoaderVariable(..))
        ));
        assert!(check_name("PATH", Some("docker")).is_ok());
        assert!(matches!(
            check_name("PATH", Some("process")),
            Err(InvalidSecret::LoaderVariable(..))
        ));
        assert_eq!(check_value(b""), Err(InvalidSecret::Empty));
        assert_eq!(check_value(b"a\0b"), Err(InvalidSecret::NotText));
        assert_eq!(check_value(&[0xff, 0xfe]), Err(InvalidSecret::NotText));
        assert!(matches!(
            check_value(&vec![b'a'; MAX_VALUE_BYTES + 1]),
            Err(InvalidSecret::TooLarge(_))
        ));
        assert!(check_value("multi\nline ✓".as_bytes()).is_ok());
    }
}
