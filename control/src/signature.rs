//! Detached module signatures: the signature document, the bytes a signer signs, signing
//! with a PKCS#8 private key and verifying against the public keys a pool trusts. The
//! operator, the runtime and `cellbus module sign|verify` share this one implementation,
//! so each refuses a module for the same reasons.
//!
//! # What is signed
//!
//! Not the module digest alone: a signature over a digest says "this code is fine", and
//! anyone could then deploy that code under any service, for example a module signed for
//! a harmless `echo` service deployed as `billing`, answering `billing`'s callers. So the
//! signature covers claims: the module's digest and, optionally, the service the signer
//! meant it for. A signature that names its service is refused on any other service
//! (`ServiceMismatch`); one that names none says only "this code is fine" and is accepted
//! for any service, which is what a signer wants for a shared module. No namespace: a
//! service is unique per NATS ("one Cell per service per NATS"), so the service names
//! what callers reach whatever namespace the Cell is in, and the same signed Cell can
//! move between namespaces.
//!
//! The signed bytes are a fixed text encoding of those claims, not the JSON document,
//! so that no JSON canonicalisation is needed and any tool (`openssl pkeyutl`, a KMS, an
//! HSM) can sign them:
//!
//! ```text
//! cellbus-module-signature-v1\n
//! digest sha256:<64 lowercase hex digits>\n
//! service <service>\n            (only when the signer named a service)
//! ```
//!
//! The first line separates these signatures from anything else the same key signs (a
//! key that also signs releases or tokens cannot be made to sign a module by accident,
//! nor the reverse), and names the version of the encoding. Both claims are checked
//! before encoding (a digest is `sha256:` and 64 lowercase hex digits, a service obeys
//! the service name rules), so neither can contain a newline and the encoding is
//! unambiguous.
//!
//! # The document
//!
//! A small JSON object, written next to the module as `FILE.sig`:
//!
//! ```json
//! {
//!   "version": 1,
//!   "algorithm": "ed25519",
//!   "claims": { "digest": "sha256:…", "service": "echo" },
//!   "keyId": "sha256:…",
//!   "signature": "base64…"
//! }
//! ```
//!
//! `keyId` is the sha256 of the signer's public key as DER SubjectPublicKeyInfo
//! (`openssl pkey -pubin -outform DER | sha256sum`); it only picks the trusted key to
//! try, the signature itself proves the key. Algorithms: `ed25519` (the signed bytes as
//! they are), `ecdsa-p256-sha256` (ASN.1 DER signature, as openssl writes it),
//! `rsa-pss-sha256` (MGF1-SHA256, 32-byte salt) and `rsa-pkcs1-sha256`, RSA keys of at
//! least 2048 bits. Unknown fields are refused rather than ignored: a later version may
//! add constraints (certificates) that a verifier must not skip.

use std::fmt;

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use p256::ecdsa::signature::{
    RandomizedSigner, SignatureEncoding as _, Signer as _, Verifier as _,
};
use pkcs8::der::zeroize::Zeroizing;
use pkcs8::LineEnding;
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The first line of the signed bytes: what they are and the encoding's version.
pub const DOMAIN: &str = "cellbus-module-signature-v1\n";
/// The version of the signature document this code reads and writes.
pub const VERSION: u64 = 1;
/// The smallest RSA key accepted, for signing and for verifying.
pub const MIN_RSA_BITS: usize = 2048;

/// A signature algorithm, named as in the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Ed25519,
    EcdsaP256Sha256,
    RsaPssSha256,
    RsaPkcs1Sha256,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Ed25519,
        Algorithm::EcdsaP256Sha256,
        Algorithm::RsaPssSha256,
        Algorithm::RsaPkcs1Sha256,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Algorithm::RsaPssSha256 => "rsa-pss-sha256",
            Algorithm::RsaPkcs1Sha256 => "rsa-pkcs1-sha256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = SignatureError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|algorithm| algorithm.as_str() == text)
            .ok_or_else(|| SignatureError::UnsupportedAlgorithm {
                algorithm: text.to_owned(),
            })
    }
}

const ED25519: &str = "Ed25519";
const P256: &str = "ECDSA P-256";
const RSA: &str = "RSA";

/// What a signature vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Claims {
    /// The module's digest, `sha256:` and 64 lowercase hex digits.
    pub digest: String,
    /// The only service the module may serve; none means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Claims {
    /// The bytes a signer signs for these claims (see the module documentation), after
    /// checking that each claim is well formed.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, SignatureError> {
        check_digest(&self.digest)?;
        let mut text = format!("{DOMAIN}digest {}\n", self.digest);
        if let Some(service) = &self.service {
            cellbus_contracts::subject::check_service(service).map_err(|source| {
                SignatureError::InvalidService {
                    service: service.clone(),
                    source,
                }
            })?;
            text.push_str(&format!("service {service}\n"));
        }
        Ok(text.into_bytes())
    }
}

fn check_digest(digest: &str) -> Result<(), SignatureError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(SignatureError::InvalidDigest {
            digest: digest.to_owned(),
        })
    }
}

/// A detached signature document, as `cellbus module sign` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureDocument {
    pub algorithm: Algorithm,
    pub claims: Claims,
    /// `sha256:` and the hex sha256 of the signer's DER SubjectPublicKeyInfo.
    pub key_id: String,
    /// The raw signature bytes (base64 in the document).
    pub signature: Vec<u8>,
}

/// The document as JSON; the algorithm stays text here so that an unknown one is
/// reported as such rather than as a shapeless document.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    version: u64,
    algorithm: String,
    claims: Claims,
    key_id: String,
    signature: String,
}

impl SignatureDocument {
    /// Reads a document, checking its version, algorithm, claims and encodings (not the
    /// signature: that is [`verify`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, SignatureError> {
        let document: Document =
            serde_json::from_slice(bytes).map_err(|source| SignatureError::Malformed {
                what:
                    "not a JSON signature document (version, algorithm, claims, keyId, signature)"
                        .into(),
                source: Some(Box::new(source)),
            })?;
        if document.version != VERSION {
            return Err(SignatureError::UnsupportedVersion {
                version: document.version,
            });
        }
        let algorithm = document.algorithm.parse()?;
        document.claims.signed_bytes()?;
        check_key_id(&document.key_id)?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&document.signature)
            .map_err(|source| SignatureError::Malformed {
                what: "signature is not base64".into(),
                source: Some(Box::new(source)),
            })?;
        Ok(SignatureDocument {
            algorithm,
            claims: document.claims,
            key_id: document.key_id,
            signature,
        })
    }

    /// The document as pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let document = Document {
            version: VERSION,
            algorithm: self.algorithm.as_str().to_owned(),
            claims: self.claims.clone(),
            key_id: self.key_id.clone(),
            signature: base64::engine::general_purpose::STANDARD.encode(&self.signature),
        };
        let mut text = serde_json::to_string_pretty(&document).expect("a document serializes");
        text.push('\n');
        text
    }
}

fn check_key_id(key_id: &str) -> Result<(), SignatureError> {
    check_digest(key_id).map_err(|_| SignatureError::Malformed {
        what: format!("keyId {key_id:?} is not `sha256:` and 64 lowercase hex digits"),
        source: None,
    })
}

/// A public key that may sign modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key_id: String,
    key: Public,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Public {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
    Rsa(rsa::RsaPublicKey),
}

impl PublicKey {
    /// Reads a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`) of Ed25519,
    /// ECDSA P-256 or RSA. A weak RSA key is read (so that a trust list holding one still
    /// works for its other keys) and refused when it signs or verifies.
    pub fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        let (label, document) =
            spki::Document::from_pem(pem.trim()).map_err(|source| SignatureError::PublicKey {
                source: Box::new(source),
            })?;
        if label != "PUBLIC KEY" {
            return Err(SignatureError::PublicKey {
                source: format!("the PEM block is a {label}, not a PUBLIC KEY").into(),
            });
        }
        PublicKey::from_der(document.as_bytes())
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_der(der: &[u8]) -> Result<Self, SignatureError> {
        let info = spki::SubjectPublicKeyInfoRef::try_from(der).map_err(|source| {
            SignatureError::PublicKey {
                source: Box::new(source),
            }
        })?;
        let key = match key_kind(&info.algorithm)? {
            Kind::Ed25519 => {
                ed25519_dalek::VerifyingKey::from_public_key_der(der).map(Public::Ed25519)
            }
            Kind::P256 => p256::ecdsa::VerifyingKey::from_public_key_der(der).map(Public::P256),
            Kind::Rsa => rsa::RsaPublicKey::from_public_key_der(der).map(Public::Rsa),
        }
        .map_err(|source| SignatureError::PublicKey {
            source: Box::new(source),
        })?;
        Ok(PublicKey::new(key))
    }

    fn new(key: Public) -> Self {
        let der = match &key {
            Public::Ed25519(key) => key.to_public_key_der(),
            Public::P256(key) => key.to_public_key_der(),
            Public::Rsa(key) => key.to_public_key_der(),
        }
        .expect("a parsed public key encodes");
        // The id of the re-encoded key, so two encodings of one key get one id.
        PublicKey {
            key_id: crate::digest_of(der.as_bytes()),
            key,
        }
    }

    /// `sha256:` and the hex sha256 of the DER SubjectPublicKeyInfo.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key as a PEM SubjectPublicKeyInfo.
    pub fn to_pem(&self) -> String {
        match &self.key {
            Public::Ed25519(key) => key.to_public_key_pem(LineEnding::LF),
            Public::P256(key) => key.to_public_key_pem(LineEnding::LF),
            Public::Rsa(key) => key.to_public_key_pem(LineEnding::LF),
        }
        .expect("a parsed public key encodes")
    }

    /// `Ed25519`, `ECDSA P-256` or `RSA 3072`.
    pub fn describe(&self) -> String {
        match &self.key {
            Public::Ed25519(_) => ED25519.to_owned(),
            Public::P256(_) => P256.to_owned(),
            Public::Rsa(key) => format!("{RSA} {}", key.n().bits()),
        }
    }

    fn fits(&self, algorithm: Algorithm) -> bool {
        matches!(
            (&self.key, algorithm),
            (Public::Ed25519(_), Algorithm::Ed25519)
                | (Public::P256(_), Algorithm::EcdsaP256Sha256)
                | (
                    Public::Rsa(_),
                    Algorithm::RsaPssSha256 | Algorithm::RsaPkcs1Sha256
                )
        )
    }

    fn check_strength(&self) -> Result<(), SignatureError> {
        match &self.key {
            Public::Rsa(key) if key.n().bits() < MIN_RSA_BITS => Err(SignatureError::WeakKey {
                key_id: self.key_id.clone(),
                bits: key.n().bits(),
            }),
            _ => Ok(()),
        }
    }

    fn verify(&self, algorithm: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match (&self.key, algorithm) {
            (Public::Ed25519(key), Algorithm::Ed25519) => {
                ed25519_dalek::Signature::from_slice(signature)
                    .is_ok_and(|signature| key.verify_strict(message, &signature).is_ok())
            }
            (Public::P256(key), Algorithm::EcdsaP256Sha256) => {
                p256::ecdsa::Signature::from_der(signature)
                    .is_ok_and(|signature| key.verify(message, &signature).is_ok())
            }
            (Public::Rsa(key), Algorithm::RsaPssSha256) => rsa::pss::Signature::try_from(signature)
                .is_ok_and(|signature| {
                    rsa::pss::VerifyingKey::<Sha256>::new(key.clone())
                        .verify(message, &signature)
                        .is_ok()
                }),
            (Public::Rsa(key), Algorithm::RsaPkcs1Sha256) => {
                rsa::pkcs1v15::Signature::try_from(signature).is_ok_and(|signature| {
                    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
                        .verify(message, &signature)
                        .is_ok()
                })
            }
            _ => false,
        }
    }
}

enum Kind {
    Ed25519,
    P256,
    Rsa,
}

fn key_kind(algorithm: &spki::AlgorithmIdentifierRef<'_>) -> Result<Kind, SignatureError> {
    const ED25519_OID: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.101.112");
    const EC_OID: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const P256_OID: spki::ObjectIdentifier =
        spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    const RSA_OID: spki::ObjectIdentifier =
        spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    match algorithm.oid {
        ED25519_OID => Ok(Kind::Ed25519),
        RSA_OID => Ok(Kind::Rsa),
        EC_OID => match algorithm.parameters_oid() {
            Ok(P256_OID) => Ok(Kind::P256),
            Ok(curve) => Err(SignatureError::UnsupportedKey {
                key_type: format!("EC on curve {curve}"),
            }),
            Err(_) => Err(SignatureError::UnsupportedKey {
                key_type: "EC without a named curve".into(),
            }),
        },
        other => Err(SignatureError::UnsupportedKey {
            key_type: format!("algorithm {other}"),
        }),
    }
}

/// The trusted public keys. Several at once, so that a signer can rotate from one key to
/// the next while modules signed by either are deployed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    keys: Vec<PublicKey>,
}

impl Trust {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Trust { keys }
    }

    /// One PEM SubjectPublicKeyInfo per item.
    pub fn from_pems<I, S>(pems: I) -> Result<Self, SignatureError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys = pems
            .into_iter()
            .map(|pem| PublicKey::from_pem(pem.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Trust { keys })
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }
}

/// Who signed a module that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The id of the trusted key that verified the signature.
    pub key_id: String,
    pub algorithm: Algorithm,
    /// The service the signature is bound to, if it names one.
    pub service: Option<String>,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {} ({})", self.key_id, self.algorithm)?;
        match &self.service {
            Some(service) => write!(f, " for service {service}"),
            None => write!(f, " for any service"),
        }
    }
}

/// Verifies `document` for the module with `digest` served as `service` (none: the
/// caller does not know, as `cellbus module verify` without `--service`).
pub fn verify(
    document: &SignatureDocument,
    digest: &str,
    service: Option<&str>,
    trust: &Trust,
) -> Result<Signer, SignatureError> {
    if document.claims.digest != digest {
        return Err(SignatureError::DigestMismatch {
            signed: document.claims.digest.clone(),
            actual: digest.to_owned(),
        });
    }
    if let (Some(signed), Some(expected)) = (&document.claims.service, service) {
        if signed != expected {
            return Err(SignatureError::ServiceMismatch {
                signed: signed.clone(),
                expected: expected.to_owned(),
            });
        }
    }
    let key = trust
        .keys
        .iter()
        .find(|key| key.key_id == document.key_id)
        .ok_or_else(|| SignatureError::UnknownKey {
            key_id: document.key_id.clone(),
        })?;
    if !key.fits(document.algorithm) {
        return Err(SignatureError::AlgorithmKeyMismatch {
            algorithm: document.algorithm,
            key_id: key.key_id.clone(),
            key_type: key.describe(),
        });
    }
    key.check_strength()?;
    let message = document.claims.signed_bytes()?;
    if !key.verify(document.algorithm, &message, &document.signature) {
        return Err(SignatureError::BadSignature {
            key_id: key.key_id.clone(),
        });
    }
    Ok(Signer {
        key_id: key.key_id.clone(),
        algorithm: document.algorithm,
        service: document.claims.service.clone(),
    })
}

/// The kind of key [`PrivateKey::generate`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Ed25519,
    P256,
    Rsa { bits: usize },
}

/// A private key that signs modules.
pub struct PrivateKey {
    key: Private,
    public: PublicKey,
}

enum Private {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
    Rsa(rsa::RsaPrivateKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// A new key from the operating system's random source. RSA below 2048 bits is
    /// refused.
    pub fn generate(key_type: KeyType) -> Result<Self, SignatureError> {
        let mut rng = rand_core::OsRng;
        let key = match key_type {
            KeyType::Ed25519 => Private::Ed25519(ed25519_dalek::SigningKey::generate(&mut rng)),
            KeyType::P256 => Private::P256(p256::ecdsa::SigningKey::random(&mut rng)),
            KeyType::Rsa { bits } if bits < MIN_RSA_BITS => {
                return Err(SignatureError::WeakKey {
                    key_id: "the new key".into(),
                    bits,
                })
            }
            KeyType::Rsa { bits } => Private::Rsa(
                rsa::RsaPrivateKey::new(&mut rng, bits)
                    .map_err(|source| SignatureError::GenerateKey { source })?,
            ),
        };
        Ok(PrivateKey::new(key))
    }

    /// Reads a PEM PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`, what `openssl
    /// genpkey` writes), unencrypted.
    pub fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        let private = |source: Box<dyn std::error::Error + Send + Sync>| {
            SignatureError::PrivateKey { source }
        };
        let (label, document) =
            pkcs8::SecretDocument::from_pem(pem.trim()).map_err(|e| private(Box::new(e)))?;
        if label != "PRIVATE KEY" {
            return Err(private(
                format!("the PEM block is a {label}, not an unencrypted PKCS#8 PRIVATE KEY").into(),
            ));
        }
        let der = document.as_bytes();
        let info = pkcs8::PrivateKeyInfo::try_from(der).map_err(|e| private(Box::new(e)))?;
        let key = match key_kind(&info.algorithm)? {
            Kind::Ed25519 => ed25519_dalek::SigningKey::from_pkcs8_der(der).map(Private::Ed25519),
            Kind::P256 => p256::ecdsa::SigningKey::from_pkcs8_der(der).map(Private::P256),
            Kind::Rsa => rsa::RsaPrivateKey::from_pkcs8_der(der).map(Private::Rsa),
        }
        .map_err(|e| private(Box::new(e)))?;
        Ok(PrivateKey::new(key))
    }

    fn new(key: Private) -> Self {
        let public = PublicKey::new(match &key {
            Private::Ed25519(key) => Public::Ed25519(key.verifying_key()),
            Private::P256(key) => Public::P256(*key.verifying_key()),
            Private::Rsa(key) => Public::Rsa(key.to_public_key()),
        });
        PrivateKey { key, public }
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The key as a PEM PKCS#8 document.
    pub fn to_pem(&self) -> Zeroizing<String> {
        match &self.key {
            Private::Ed25519(key) => key.to_pkcs8_pem(LineEnding::LF),
            Private::P256(key) => key.to_pkcs8_pem(LineEnding::LF),
            Private::Rsa(key) => key.to_pkcs8_pem(LineEnding::LF),
        }
        .expect("a private key encodes")
    }

    /// What this key signs with unless told otherwise: RSA signs with PSS, the padding
    /// with a security proof.
    pub fn default_algorithm(&self) -> Algorithm {
        match &self.key {
            Private::Ed25519(_) => Algorithm::Ed25519,
            Private::P256(_) => Algorithm::EcdsaP256Sha256,
            Private::Rsa(_) => Algorithm::RsaPssSha256,
        }
    }
}

/// Signs `claims` with `key`, with `algorithm` or the key's default.
pub fn sign(
    claims: Claims,
    key: &PrivateKey,
    algorithm: Option<Algorithm>,
) -> Result<SignatureDocument, SignatureError> {
    let algorithm = algorithm.unwrap_or_else(|| key.default_algorithm());
    if !key.public.fits(algorithm) {
        return Err(SignatureError::AlgorithmKeyMismatch {
            algorithm,
            key_id: key.public.key_id.clone(),
            key_type: key.public.describe(),
        });
    }
    key.public.check_strength()?;
    let message = claims.signed_bytes()?;
    let signing = |source| SignatureError::Sign { source };
    let signature = match (&key.key, algorithm) {
        (Private::Ed25519(key), _) => key.sign(&message).to_vec(),
        (Private::P256(key), _) => {
            let signature: p256::ecdsa::Signature = key.try_sign(&message).map_err(signing)?;
            signature.to_der().as_bytes().to_vec()
        }
        (Private::Rsa(key), Algorithm::RsaPkcs1Sha256) => {
            rsa::pkcs1v15::SigningKey::<Sha256>::new(key.clone())
                .try_sign(&message)
                .map_err(signing)?
                .to_vec()
        }
        (Private::Rsa(key), _) => rsa::pss::BlindedSigningKey::<Sha256>::new(key.clone())
            .try_sign_with_rng(&mut rand_core::OsRng, &message)
            .map_err(signing)?
            .to_vec(),
    };
    Ok(SignatureDocument {
        algorithm,
        claims,
        key_id: key.public.key_id.clone(),
        signature,
    })
}

/// Why a module's signature is refused, or a key or document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature document: {what}")]
    Malformed {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("signature document version {version} is not supported; this cellbus reads version {VERSION}")]
    UnsupportedVersion { version: u64 },
    #[error("signature algorithm {algorithm:?} is not supported; use ed25519, ecdsa-p256-sha256, rsa-pss-sha256 or rsa-pkcs1-sha256")]
    UnsupportedAlgorithm { algorithm: String },
    #[error("{digest:?} is not a module digest (`sha256:` and 64 lowercase hex digits)")]
    InvalidDigest { digest: String },
    #[error("{service:?} is not a service name")]
    InvalidService {
        service: String,
        #[source]
        source: cellbus_contracts::subject::SubjectError,
    },
    #[error("the signature is for module {signed}, not for this module ({actual})")]
    DigestMismatch { signed: String, actual: String },
    #[error("the signature is for service {signed}, not for {expected}")]
    ServiceMismatch { signed: String, expected: String },
    #[error("the module is signed by key {key_id}, which is not trusted")]
    UnknownKey { key_id: String },
    #[error("{key_id} is an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required")]
    WeakKey { key_id: String, bits: usize },
    #[error("algorithm {algorithm} does not fit key {key_id} ({key_type})")]
    AlgorithmKeyMismatch {
        algorithm: Algorithm,
        key_id: String,
        key_type: String,
    },
    #[error("the signature does not verify with key {key_id}: the module, its claims or the signature changed after signing")]
    BadSignature { key_id: String },
    #[error("not a PEM public key (SubjectPublicKeyInfo, `-----BEGIN PUBLIC KEY-----`) of Ed25519, ECDSA P-256 or RSA")]
    PublicKey {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("not an unencrypted PEM PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`) of Ed25519, ECDSA P-256 or RSA; `openssl pkcs8 -topk8 -nocrypt` converts other forms")]
    PrivateKey {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("a {key_type} key is not supported; use Ed25519, ECDSA P-256 or RSA")]
    UnsupportedKey { key_type: String },
    #[error("generating an RSA key")]
    GenerateKey {
        #[source]
        source: rsa::Error,
    },
    #[error("signing")]
    Sign {
        #[source]
        source: p256::ecdsa::Error,
    },
}

impl SignatureError {
    /// The reason in one PascalCase word, for condition reasons and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Malformed { .. }
            | SignatureError::UnsupportedVersion { .. }
            | SignatureError::InvalidDigest { .. }
            | SignatureError::InvalidService { .. } => "Malformed",
            SignatureError::UnsupportedAlgorithm { .. } | SignatureError::UnsupportedKey { .. } => {
                "UnsupportedAlgorithm"
            }
            SignatureError::DigestMismatch { .. } => "DigestMismatch",
            SignatureError::ServiceMismatch { .. } => "ServiceMismatch",
            SignatureError::UnknownKey { .. } => "UnknownKey",
            SignatureError::WeakKey { .. } => "WeakKey",
            SignatureError::AlgorithmKeyMismatch { .. } => "AlgorithmKeyMismatch",
            SignatureError::BadSignature { .. } => "BadSignature",
            SignatureError::PublicKey { .. } | SignatureError::PrivateKey { .. } => "BadKey",
            SignatureError::GenerateKey { .. } | SignatureError::Sign { .. } => "SigningFailed",
        }
    }
}
