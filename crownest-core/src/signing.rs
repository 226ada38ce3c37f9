//! Signed evidence: the in-toto Statement of an Evidence Bundle in a DSSE envelope, signed
//! with an ed25519 host key (DESIGN §2.6: "an optional ed25519 host key signs it").
//!
//! * [`HostKey`] is the signing key: generated, or loaded from a file that holds its 32-byte
//!   seed as 64 hex digits and that only its owner may read (mode `0600`, refused otherwise,
//!   as ssh refuses a readable private key).
//! * [`HostPublicKey`] is what a verifier needs; its [`key_id`](HostPublicKey::key_id) is the
//!   sha256 of the 32 public key bytes, in hex, and is the envelope's `keyid`.
//! * [`DsseEnvelope`] is the envelope of the DSSE v1 protocol: `payload` is the base64 of the
//!   statement's canonical JSON, and the signature is over
//!   `PAE(payloadType, payload) = "DSSEv1" SP len(type) SP type SP len(body) SP body`.
//!
//! Verification ([`DsseEnvelope::verify`]) checks the payload type, finds the signature made
//! by the given key, checks it (`verify_strict`: no malleable or small-order signatures), and
//! returns the statement.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// The DSSE `payloadType` of an in-toto Statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a signed envelope was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The envelope or key is not well formed (bad base64, bad JSON, wrong length).
    #[error("malformed: {0}")]
    Malformed(String),
    /// The payload is not an in-toto Statement.
    #[error("payload type {0:?}, expected {IN_TOTO_PAYLOAD_TYPE:?}")]
    PayloadType(String),
    /// No signature of the envelope was made by the given key.
    #[error("no signature by key {key_id}")]
    NoSignatureByKey {
        /// The verifier's key id.
        key_id: String,
    },
    /// The signature by the given key does not match the payload.
    #[error("the signature by key {key_id} does not match the payload")]
    BadSignature {
        /// The verifier's key id.
        key_id: String,
    },
}

/// An ed25519 signing key of the host that ran the runs.
pub struct HostKey {
    key: SigningKey,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("key_id", &self.public_key().key_id())
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self::from_seed(rand::random())
    }

    /// The key with this 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the key at `path`, or creates it there (mode `0600`, never replacing a file)
    /// when there is none. The new key is written to a temporary file in the same directory,
    /// synced, and linked into place, so a concurrent caller sees either no key or the whole
    /// key, never an empty file. A key file that group or others may read is refused.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match Self::load(path) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let context = || format!("creating the host key {}", path.display());
        let key = Self::generate();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".host-key-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|e| Error::io(context(), e))?;
        (|| {
            let mut f = tmp.as_file();
            f.write_all(format!("{}\n", hex::encode(key.key.to_bytes())).as_bytes())?;
            f.sync_all()
        })()
        .map_err(|e| Error::io(context(), e))?;
        // `link` never replaces: whoever links first wins, the others load that key.
        match std::fs::hard_link(tmp.path(), path) {
            Ok(()) => {
                // The new name is durable before anything is signed with the key.
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| Error::io(context(), e))?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(Error::io(context(), e)),
        }
        // `tmp` is removed on drop.
    }

    /// Loads the key at `path` (64 hex digits). The permission check and the read use one
    /// open file, and at most 256 bytes are read.
    pub fn load(path: &Path) -> Result<Self> {
        use std::io::Read as _;
        let context = || format!("reading the host key {}", path.display());
        let file = std::fs::File::open(path).map_err(|e| Error::io(context(), e))?;
        let meta = file.metadata().map_err(|e| Error::io(context(), e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::io(
                context(),
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "the key file has mode {:o}; it must not be readable by group or others (chmod 600)",
                        meta.permissions().mode() & 0o777
                    ),
                ),
            ));
        }
        let mut text = String::new();
        file.take(256)
            .read_to_string(&mut text)
            .map_err(|e| Error::io(context(), e))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| {
            Error::io(
                context(),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the key file must hold 64 hex digits",
                ),
            )
        })?;
        Ok(Self::from_seed(seed))
    }

    /// The public half.
    pub fn public_key(&self) -> HostPublicKey {
        HostPublicKey(self.key.verifying_key())
    }

    /// Signs `statement` (its canonical JSON) into a DSSE envelope.
    pub fn sign_statement(&self, statement: &Value) -> DsseEnvelope {
        let body = crate::canonical::to_vec(statement);
        let sig = self.key.sign(&pae(IN_TOTO_PAYLOAD_TYPE, &body));
        DsseEnvelope {
            payload_type: IN_TOTO_PAYLOAD_TYPE.into(),
            payload: B64.encode(&body),
            signatures: vec![DsseSignature {
                keyid: self.public_key().key_id(),
                sig: B64.encode(sig.to_bytes()),
            }],
        }
    }
}

/// An ed25519 public key that verifies [`DsseEnvelope`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPublicKey(VerifyingKey);

impl HostPublicKey {
    /// Parses a public key: a PEM `PUBLIC KEY` block (SubjectPublicKeyInfo, RFC 8410, as
    /// `openssl pkey -pubout` writes it), or the 32 raw bytes as 64 hex digits (surrounding
    /// whitespace ignored).
    pub fn parse(text: &str) -> std::result::Result<Self, SignatureError> {
        use ed25519_dalek::pkcs8::DecodePublicKey as _;
        if text.contains("-----BEGIN") {
            return VerifyingKey::from_public_key_pem(text.trim())
                .map(Self)
                .map_err(|e| {
                    SignatureError::Malformed(format!("not an ed25519 PEM public key: {e}"))
                });
        }
        let hex_text = text;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_text.trim(), &mut bytes).map_err(|_| {
            SignatureError::Malformed(
                "a public key is a PEM PUBLIC KEY block or 64 hex digits".into(),
            )
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|e| SignatureError::Malformed(format!("not an ed25519 public key: {e}")))
    }

    /// The key as a PEM `PUBLIC KEY` block (SubjectPublicKeyInfo, RFC 8410), as
    /// `openssl`, `cosign` and the `cryptography` package read it.
    pub fn to_pem(&self) -> String {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        self.0.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// The 32 bytes in hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// sha256 of the 32 public key bytes, in hex: the envelope's `keyid`.
    pub fn key_id(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

/// A DSSE v1 envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DsseEnvelope {
    /// `application/vnd.in-toto+json`.
    pub payload_type: String,
    /// base64 of the payload bytes.
    pub payload: String,
    /// One per signing key.
    pub signatures: Vec<DsseSignature>,
}

/// One signature of a [`DsseEnvelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DsseSignature {
    /// sha256 of the signer's public key, hex.
    pub keyid: String,
    /// base64 of the 64-byte ed25519 signature over the PAE.
    pub sig: String,
}

impl DsseEnvelope {
    /// Checks the signature made by `key` and returns the statement it signs. Every
    /// signature whose `keyid` is the key's (or empty) is tried; base64 may be standard or
    /// URL-safe, padded or not (DSSE allows both alphabets).
    pub fn verify(&self, key: &HostPublicKey) -> std::result::Result<Value, SignatureError> {
        if self.payload_type != IN_TOTO_PAYLOAD_TYPE {
            return Err(SignatureError::PayloadType(self.payload_type.clone()));
        }
        let body = decode_b64(&self.payload)
            .ok_or_else(|| SignatureError::Malformed("the payload is not base64".into()))?;
        let key_id = key.key_id();
        let message = pae(&self.payload_type, &body);
        let mut candidates = self
            .signatures
            .iter()
            .filter(|s| s.keyid == key_id || s.keyid.is_empty())
            .peekable();
        if candidates.peek().is_none() {
            return Err(SignatureError::NoSignatureByKey { key_id });
        }
        let mut malformed = None;
        for sig in candidates {
            let Some(bytes) = decode_b64(&sig.sig).and_then(|b| <[u8; 64]>::try_from(b).ok())
            else {
                malformed = Some(SignatureError::Malformed(
                    "a signature is 64 bytes in base64".into(),
                ));
                continue;
            };
            let signature = ed25519_dalek::Signature::from_bytes(&bytes);
            if key.0.verify_strict(&message, &signature).is_ok() {
                return serde_json::from_slice(&body).map_err(|e| {
                    SignatureError::Malformed(format!("the payload is not JSON: {e}"))
                });
            }
            malformed = None;
        }
        Err(malformed.unwrap_or(SignatureError::BadSignature { key_id }))
    }
}

/// Standard or URL-safe base64, padded or not.
fn decode_b64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [B64, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(text).ok())
}

/// DSSE's pre-authentication encoding.
fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_round_trip_as_pem_and_hex() {
        let key = HostKey::from_seed([9; 32]).public_key();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert_eq!(HostPublicKey::parse(&pem).unwrap(), key);
        assert_eq!(HostPublicKey::parse(&key.to_hex()).unwrap(), key);
        // RFC 8410's SPKI: a 12-byte prefix, then the raw key.
        let der = B64
            .decode(
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        assert_eq!(der.len(), 44);
        assert_eq!(hex::encode(&der[..12]), "302a300506032b6570032100");
        assert_eq!(hex::encode(&der[12..]), key.to_hex());
        assert!(
            HostPublicKey::parse("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE v1 protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn sign_then_verify_and_every_tampering_is_refused() {
        let key = HostKey::from_seed([7; 32]);
        let statement = serde_json::json!({"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "a", "digest": {"sha256": "00"}}]});
        let env = key.sign_statement(&statement);
        assert_eq!(env.verify(&key.public_key()).unwrap(), statement);

        let other = HostKey::from_seed([8; 32]).public_key();
        assert!(matches!(
            env.verify(&other),
            Err(SignatureError::NoSignatureByKey { .. })
        ));

        let mut edited = env.clone();
        let mut body = B64.decode(&edited.payload).unwrap();
        let at = body.iter().position(|b| *b == b'a').unwrap();
        body[at] = b'b';
        edited.payload = B64.encode(&body);
        assert!(matches!(
            edited.verify(&key.public_key()),
            Err(SignatureError::BadSignature { .. })
        ));

        let mut retyped = env.clone();
        retyped.payload_type = "application/json".into();
        assert!(matches!(
            retyped.verify(&key.public_key()),
            Err(SignatureError::PayloadType(_))
        ));

        let mut garbled = env.clone();
        garbled.signatures[0].sig = "AAAA".into();
        assert!(matches!(
            garbled.verify(&key.public_key()),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn a_bogus_signature_first_or_url_safe_base64_does_not_hide_a_valid_one() {
        let key = HostKey::from_seed([9; 32]);
        let statement =
            serde_json::json!({"_type": "https://in-toto.io/Statement/v1", "subject": []});
        let mut env = key.sign_statement(&statement);
        let valid = env.signatures[0].clone();
        env.signatures.insert(
            0,
            DsseSignature {
                keyid: valid.keyid.clone(),
                sig: B64.encode([0u8; 64]),
            },
        );
        assert_eq!(env.verify(&key.public_key()).unwrap(), statement);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        env.payload = url_safe.encode(B64.decode(&env.payload).unwrap());
        env.signatures[1].sig = url_safe.encode(B64.decode(&valid.sig).unwrap());
        assert_eq!(env.verify(&key.public_key()).unwrap(), statement);
        env.signatures.remove(1);
        assert!(matches!(
            env.verify(&key.public_key()),
            Err(SignatureError::BadSignature { .. })
        ));
    }

    #[test]
    fn concurrent_creators_all_get_the_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.key");
        let keys: Vec<HostPublicKey> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| HostKey::load_or_create(&path).unwrap().public_key()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn key_files_are_created_private_and_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.key");
        let created = HostKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = HostKey::load_or_create(&path).unwrap();
        assert_eq!(created.public_key(), loaded.public_key());
        let parsed = HostPublicKey::parse(&created.public_key().to_hex()).unwrap();
        assert_eq!(parsed, created.public_key());
        assert_eq!(parsed.key_id().len(), 64);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = HostKey::load(&path).unwrap_err();
        assert!(err.chain().contains("chmod 600"), "{}", err.chain());

        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "zz").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(HostKey::load(&bad).is_err());
        assert!(HostPublicKey::parse("abc").is_err());
    }
}
