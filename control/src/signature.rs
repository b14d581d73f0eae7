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
//! A small JSON object ([`ModuleSignature`]), written next to the module as `FILE.sig`
//! and pasted as it is under a Cell's `spec.signature` (JSON is YAML):
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
//! A raw key names itself with `keyId`, the sha256 of its DER SubjectPublicKeyInfo
//! (`openssl pkey -pubin -outform DER | sha256sum`); it only picks the trusted key to
//! try, the signature itself proves the key. A certificate signer instead carries
//! `certificates`: its own certificate and the intermediates up to an authority the pool
//! trusts, leaf first, each PEM. Algorithms: `ed25519` (the signed bytes as they are),
//! `ecdsa-p256-sha256` (ASN.1 DER signature, as openssl writes it), `rsa-pss-sha256`
//! (MGF1-SHA256, 32-byte salt) and `rsa-pkcs1-sha256`, RSA keys of at least 2048 bits,
//! for signers and authorities alike. Unknown fields are refused rather than ignored: a
//! later version may add constraints that a verifier must not skip.
//!
//! # Certificates
//!
//! The chain is built and checked by webpki (the path validation rustls uses): every
//! certificate within its validity at the time of verification, each issued by the next
//! up to a trusted authority, CA certificates marked as such, and the signer's extended
//! key usage, when it has one, including code signing. The signer's names (subject common
//! name, subject alternative names) are then matched against the pool's `signers`.

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use cellbus_contracts::resources::{
    CellPoolSpec, CellSpec, KeyRef, ModuleSignature, SignedClaims, SignerConstraints, TrustSource,
    TrustSpec,
};
use cellbus_contracts::validate::FieldError;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use p256::ecdsa::signature::{
    RandomizedSigner, SignatureEncoding as _, Signer as _, Verifier as _,
};
use pkcs8::der::zeroize::Zeroizing;
use pkcs8::LineEnding;
use rsa::traits::PublicKeyParts;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::Sha256;
use x509_cert::der::{Decode as _, DecodePem as _, Encode as _};

/// The first line of the signed bytes: what they are and the encoding's version.
pub const DOMAIN: &str = "cellbus-module-signature-v1\n";
/// The version of the signature document this code reads and writes.
pub const VERSION: u32 = 1;
/// The smallest RSA key accepted, for signing and for verifying.
pub const MIN_RSA_BITS: usize = 2048;
/// The extended key usage `id-kp-codeSigning` (1.3.6.1.5.5.7.3.3), DER contents.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// Certificates a signature may carry: the signer and its intermediates.
pub const MAX_CERTIFICATES: usize = 8;

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

/// The bytes a signer signs for `claims` (see the module documentation), after checking
/// that each claim is well formed.
pub fn signed_bytes(claims: &SignedClaims) -> Result<Vec<u8>, SignatureError> {
    check_digest(&claims.digest)?;
    let mut text = format!("{DOMAIN}digest {}\n", claims.digest);
    if let Some(service) = &claims.service {
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

/// Who signed, as a document says: a trusted raw key, or a certificate chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignedBy {
    /// `sha256:` and the hex sha256 of the signer's DER SubjectPublicKeyInfo.
    Key(String),
    /// DER certificates, the signer's first.
    Certificates(Vec<Vec<u8>>),
}

/// A detached signature document, read and checked for shape (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureDocument {
    pub algorithm: Algorithm,
    pub claims: SignedClaims,
    pub signed_by: SignedBy,
    /// The raw signature bytes (base64 in the document).
    pub signature: Vec<u8>,
}

impl SignatureDocument {
    /// Reads a JSON document, as `cellbus module sign` writes it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SignatureError> {
        let document: ModuleSignature =
            serde_json::from_slice(bytes).map_err(|source| SignatureError::Malformed {
                what: "not a JSON signature document (version, algorithm, claims, keyId or certificates, signature)".into(),
                source: Some(Box::new(source)),
            })?;
        SignatureDocument::read(&document)
    }

    /// Checks a document's version, algorithm, claims and encodings (not the signature:
    /// that is [`verify`]).
    pub fn read(document: &ModuleSignature) -> Result<Self, SignatureError> {
        if document.version != VERSION {
            return Err(SignatureError::UnsupportedVersion {
                version: document.version,
            });
        }
        let algorithm = document.algorithm.parse()?;
        signed_bytes(&document.claims)?;
        let signed_by = match (&document.key_id, document.certificates.as_slice()) {
            (Some(_), [_, ..]) => {
                return Err(SignatureError::Malformed {
                    what: "a document names a keyId or carries certificates, not both".into(),
                    source: None,
                })
            }
            (Some(key_id), []) => {
                check_digest(key_id).map_err(|_| SignatureError::Malformed {
                    what: format!("keyId {key_id:?} is not `sha256:` and 64 lowercase hex digits"),
                    source: None,
                })?;
                SignedBy::Key(key_id.clone())
            }
            (None, []) => {
                return Err(SignatureError::Malformed {
                    what: "the document names no keyId and carries no certificates".into(),
                    source: None,
                })
            }
            (None, pems) if pems.len() > MAX_CERTIFICATES => {
                return Err(SignatureError::Malformed {
                    what: format!(
                        "{} certificates; a chain carries at most {MAX_CERTIFICATES}",
                        pems.len()
                    ),
                    source: None,
                })
            }
            (None, pems) => SignedBy::Certificates(
                pems.iter()
                    .enumerate()
                    .map(|(index, pem)| {
                        certificate_der(pem).map_err(|source| SignatureError::Malformed {
                            what: format!("certificates[{index}] is not a PEM certificate"),
                            source: Some(source),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&document.signature)
            .map_err(|source| SignatureError::Malformed {
                what: "signature is not base64".into(),
                source: Some(Box::new(source)),
            })?;
        Ok(SignatureDocument {
            algorithm,
            claims: document.claims.clone(),
            signed_by,
            signature,
        })
    }

    /// The document as a manifest carries it.
    pub fn to_manifest(&self) -> ModuleSignature {
        let (key_id, certificates) = match &self.signed_by {
            SignedBy::Key(key_id) => (Some(key_id.clone()), Vec::new()),
            SignedBy::Certificates(ders) => (
                None,
                ders.iter().map(|der| pem("CERTIFICATE", der)).collect(),
            ),
        };
        ModuleSignature {
            version: VERSION,
            algorithm: self.algorithm.as_str().to_owned(),
            claims: self.claims.clone(),
            key_id,
            certificates,
            signature: base64::engine::general_purpose::STANDARD.encode(&self.signature),
        }
    }

    /// The document as pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(&self.to_manifest()).expect("a document serializes");
        text.push('\n');
        text
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The DER of one PEM certificate.
fn certificate_der(text: &str) -> Result<Vec<u8>, BoxError> {
    let certificate = x509_cert::Certificate::from_pem(text.trim().as_bytes())?;
    Ok(certificate.to_der()?)
}

/// Every certificate of a PEM bundle, DER.
pub fn certificates_from_pem(text: &str) -> Result<Vec<Vec<u8>>, BoxError> {
    let certificates = x509_cert::Certificate::load_pem_chain(text.as_bytes())?;
    if certificates.is_empty() {
        return Err("no PEM certificate".into());
    }
    certificates
        .iter()
        .map(|certificate| Ok(certificate.to_der()?))
        .collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
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
    /// ECDSA P-256 or RSA.
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

    /// Refuses an RSA key below [`MIN_RSA_BITS`]; `whose` names the key in the error.
    fn check_strength(&self, whose: &str) -> Result<(), SignatureError> {
        match &self.key {
            Public::Rsa(key) if key.n().bits() < MIN_RSA_BITS => Err(SignatureError::WeakKey {
                key: whose.to_owned(),
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

/// A trusted certificate authority.
#[derive(Clone, Debug)]
struct Authority {
    anchor: TrustAnchor<'static>,
    subject: String,
}

/// The signers a pool trusts, parsed: raw keys, certificate authorities and the names
/// their certificates must carry. Several at once, so that a signer can rotate from one
/// key to the next while modules signed by either are deployed.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    keys: Vec<PublicKey>,
    authorities: Vec<Authority>,
    signers: Option<SignerConstraints>,
}

/// A trust entry that cannot be used, naming its field (`keys[1]`).
#[derive(Debug, thiserror::Error)]
#[error("{field}")]
pub struct TrustError {
    pub field: String,
    #[source]
    pub source: SignatureError,
}

impl Trust {
    /// The trust of a pool. Every entry must be usable, weak keys and authorities
    /// included: a trust that silently drops an entry would refuse, later and far from
    /// here, modules its author meant to allow.
    pub fn from_spec(spec: &TrustSpec) -> Result<Self, TrustError> {
        // Sources are read into keys and authorities first ([`resolve_trust`]); a trust
        // that still names one would silently trust less than its author meant.
        if !spec.from.is_empty() {
            return Err(TrustError {
                field: "from".into(),
                source: SignatureError::TrustUnresolved,
            });
        }
        let mut trust = Trust {
            signers: spec.signers.clone(),
            ..Trust::default()
        };
        for (index, pem) in spec.keys.iter().enumerate() {
            let field = || format!("keys[{index}]");
            let key = PublicKey::from_pem(pem).map_err(|source| TrustError {
                field: field(),
                source,
            })?;
            key.check_strength(&format!("trusted key {}", key.key_id()))
                .map_err(|source| TrustError {
                    field: field(),
                    source,
                })?;
            trust.keys.push(key);
        }
        for (index, pem) in spec.certificate_authorities.iter().enumerate() {
            let authority = Authority::from_pem(pem).map_err(|source| TrustError {
                field: format!("certificateAuthorities[{index}]"),
                source,
            })?;
            trust.authorities.push(authority);
        }
        Ok(trust)
    }

    /// Trusts one more raw key.
    pub fn add_key(&mut self, key: PublicKey) {
        self.keys.push(key);
    }

    /// The raw keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Adds the authorities of a PEM bundle, as `cellbus module verify --trust CA` gives
    /// them.
    pub fn add_authorities(&mut self, pem: &str) -> Result<(), SignatureError> {
        for der in certificates_from_pem(pem).map_err(|source| SignatureError::Certificate {
            what: "not a PEM certificate".into(),
            source: Some(source),
        })? {
            self.authorities.push(Authority::from_der(der)?);
        }
        Ok(())
    }

    /// Requires certificate signers to carry one of these names.
    pub fn constrain_signers(&mut self, signers: SignerConstraints) {
        self.signers = Some(signers);
    }
}

impl Authority {
    fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        let der = certificate_der(pem).map_err(|source| SignatureError::Certificate {
            what: "not a PEM certificate".into(),
            source: Some(source),
        })?;
        Authority::from_der(der)
    }

    fn from_der(der: Vec<u8>) -> Result<Self, SignatureError> {
        let (subject, key) = certificate_key(&der)?;
        key.check_strength(&format!("authority {subject}"))?;
        let certificate = CertificateDer::from(der);
        let anchor = webpki::anchor_from_trusted_cert(&certificate)
            .map_err(|error| SignatureError::Certificate {
                what: format!("authority {subject} cannot anchor a chain: {error}"),
                source: None,
            })?
            .to_owned();
        Ok(Authority { anchor, subject })
    }
}

/// A certificate's subject (RFC 4514) and public key.
fn certificate_key(der: &[u8]) -> Result<(String, PublicKey), SignatureError> {
    let certificate =
        x509_cert::Certificate::from_der(der).map_err(|source| SignatureError::Certificate {
            what: "not a DER certificate".into(),
            source: Some(Box::new(source)),
        })?;
    let subject = certificate.tbs_certificate.subject.to_string();
    let spki = certificate
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|source| SignatureError::Certificate {
            what: format!("the public key of {subject}"),
            source: Some(Box::new(source)),
        })?;
    Ok((subject, PublicKey::from_der(&spki)?))
}

/// The names a signer's certificate carries: subject common names, then subject
/// alternative names (DNS names, emails, URIs).
fn certificate_names(der: &[u8]) -> Result<Vec<String>, SignatureError> {
    use x509_cert::ext::pkix::name::GeneralName;
    const COMMON_NAME: x509_cert::der::asn1::ObjectIdentifier =
        x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");
    let certificate =
        x509_cert::Certificate::from_der(der).map_err(|source| SignatureError::Certificate {
            what: "not a DER certificate".into(),
            source: Some(Box::new(source)),
        })?;
    let tbs = &certificate.tbs_certificate;
    let mut names: Vec<String> = tbs
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|attribute| attribute.oid == COMMON_NAME)
        .filter_map(|attribute| {
            let text = attribute.to_string();
            text.strip_prefix("CN=").map(str::to_owned)
        })
        .collect();
    let alt_names = tbs
        .get::<x509_cert::ext::pkix::SubjectAltName>()
        .map_err(|source| SignatureError::Certificate {
            what: "its subject alternative names".into(),
            source: Some(Box::new(source)),
        })?;
    for name in alt_names.into_iter().flat_map(|(_, names)| names.0) {
        match name {
            GeneralName::DnsName(name)
            | GeneralName::Rfc822Name(name)
            | GeneralName::UniformResourceIdentifier(name) => names.push(name.to_string()),
            _ => {}
        }
    }
    Ok(names)
}

/// Who signed a module that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The trusted key, or the certificate and the authority it chains to.
    pub identity: SignerIdentity,
    pub algorithm: Algorithm,
    /// The service the signature is bound to, if it names one.
    pub service: Option<String>,
}

/// A signer as status and logs name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignerIdentity {
    Key { key_id: String },
    Certificate { subject: String, authority: String },
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.identity {
            SignerIdentity::Key { key_id } => write!(f, "key {key_id} ({})", self.algorithm)?,
            SignerIdentity::Certificate { subject, authority } => write!(
                f,
                "certificate {subject} ({}) issued under {authority}",
                self.algorithm
            )?,
        }
        match &self.service {
            Some(service) => write!(f, " for service {service}"),
            None => write!(f, " for any service"),
        }
    }
}

/// Verifies `document` for the module with `digest` served as `service` (none: the
/// caller does not know, as `cellbus module verify` without `--service`), at `now`.
pub fn verify(
    document: &SignatureDocument,
    digest: &str,
    service: Option<&str>,
    trust: &Trust,
    now: SystemTime,
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
    let message = signed_bytes(&document.claims)?;
    let identity = match &document.signed_by {
        SignedBy::Key(key_id) => {
            let key = trust
                .keys
                .iter()
                .find(|key| &key.key_id == key_id)
                .ok_or_else(|| SignatureError::UnknownKey {
                    key_id: key_id.clone(),
                })?;
            check_signature(key, &format!("key {key_id}"), document, &message)?;
            SignerIdentity::Key {
                key_id: key_id.clone(),
            }
        }
        SignedBy::Certificates(chain) => verify_chain(chain, document, &message, trust, now)?,
    };
    Ok(Signer {
        identity,
        algorithm: document.algorithm,
        service: document.claims.service.clone(),
    })
}

fn check_signature(
    key: &PublicKey,
    whose: &str,
    document: &SignatureDocument,
    message: &[u8],
) -> Result<(), SignatureError> {
    if !key.fits(document.algorithm) {
        return Err(SignatureError::AlgorithmKeyMismatch {
            algorithm: document.algorithm,
            key: whose.to_owned(),
            key_type: key.describe(),
        });
    }
    key.check_strength(whose)?;
    if key.verify(document.algorithm, message, &document.signature) {
        Ok(())
    } else {
        Err(SignatureError::BadSignature {
            key: whose.to_owned(),
        })
    }
}

fn verify_chain(
    chain: &[Vec<u8>],
    document: &SignatureDocument,
    message: &[u8],
    trust: &Trust,
    now: SystemTime,
) -> Result<SignerIdentity, SignatureError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| SignatureError::Malformed {
            what: "no certificates".into(),
            source: None,
        })?;
    let (subject, key) = certificate_key(leaf)?;
    for der in intermediates {
        let (issuer, key) = certificate_key(der)?;
        key.check_strength(&format!("intermediate {issuer}"))?;
    }
    check_signature(&key, &format!("certificate {subject}"), document, message)?;
    if trust.authorities.is_empty() {
        return Err(SignatureError::UnknownAuthority {
            subject,
            detail: "the trust lists no certificate authority".into(),
        });
    }
    let anchors: Vec<TrustAnchor<'_>> = trust
        .authorities
        .iter()
        .map(|authority| authority.anchor.clone())
        .collect();
    let leaf_der = CertificateDer::from(leaf.as_slice());
    let end_entity = webpki::EndEntityCert::try_from(&leaf_der).map_err(|error| {
        SignatureError::Certificate {
            what: format!("{subject} cannot be read as a signer's certificate: {error}"),
            source: None,
        }
    })?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|der| CertificateDer::from(der.as_slice()))
        .collect();
    let time = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let path = end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            webpki::KeyUsage::required_if_present(CODE_SIGNING),
            None,
            None,
        )
        .map_err(|error| chain_error(error, &subject))?;
    let anchor = path.anchor();
    let authority = trust
        .authorities
        .iter()
        .find(|authority| authority.anchor.subject == anchor.subject)
        .map(|authority| authority.subject.clone())
        .unwrap_or_default();
    if let Some(signers) = &trust.signers {
        let names = certificate_names(leaf)?;
        let allowed = names.iter().any(|name| {
            signers.common_names.contains(name) || signers.subject_alt_names.contains(name)
        });
        if !allowed {
            return Err(SignatureError::SignerNotAllowed { subject, names });
        }
    }
    Ok(SignerIdentity::Certificate { subject, authority })
}

fn chain_error(error: webpki::Error, subject: &str) -> SignatureError {
    let subject = subject.to_owned();
    match error {
        webpki::Error::CertExpired { .. } => SignatureError::CertificateExpired { subject },
        webpki::Error::CertNotValidYet { .. } => SignatureError::CertificateNotYetValid { subject },
        webpki::Error::UnknownIssuer => SignatureError::UnknownAuthority {
            subject,
            detail: "no trusted authority issued it or an intermediate the signature carries"
                .into(),
        },
        webpki::Error::RequiredEkuNotFoundContext(_) => SignatureError::Certificate {
            what: format!(
                "{subject} is not for code signing (its extended key usage lacks codeSigning)"
            ),
            source: None,
        },
        other => SignatureError::Certificate {
            what: format!("the chain of {subject} does not verify: {other}"),
            source: None,
        },
    }
}

/// The module of `digest` (none: a command, which no signature covers) with `signature`,
/// served as `service` by a pool that trusts `trust`: who signed it, or why it is
/// refused. The operator (before a Cell enters an assignment), the runtime (before it
/// loads one) and `cellbus up` all decide with this.
pub fn verify_module(
    signature: Option<&ModuleSignature>,
    digest: Option<&str>,
    service: &str,
    trust: &Trust,
    now: SystemTime,
) -> Result<Signer, SignatureError> {
    let digest = digest.ok_or(SignatureError::NotSignable)?;
    let signature = signature.ok_or(SignatureError::Unsigned)?;
    let document = SignatureDocument::read(signature)?;
    verify(&document, digest, Some(service), trust, now)
}

/// A ConfigMap or Secret a trust may read from, its values as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceObject {
    /// `ConfigMap` or `Secret`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub data: std::collections::BTreeMap<String, String>,
}

impl SourceObject {
    /// The ConfigMaps and Secrets among manifests (`cellbus check`, `cellbus up`): a
    /// ConfigMap's `data`, a Secret's `stringData` and base64 `data`.
    pub fn from_documents(documents: &[serde_json::Value]) -> Vec<Self> {
        documents
            .iter()
            .filter_map(|document| {
                let kind = match document["kind"].as_str()? {
                    "ConfigMap" if document["apiVersion"] == "v1" => "ConfigMap",
                    "Secret" if document["apiVersion"] == "v1" => "Secret",
                    _ => return None,
                };
                let metadata = &document["metadata"];
                let mut data = std::collections::BTreeMap::new();
                let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
                if let Some(map) = document["data"].as_object() {
                    for (key, value) in map {
                        let value = match kind {
                            "Secret" => text(value).and_then(|encoded| {
                                let bytes = base64::engine::general_purpose::STANDARD
                                    .decode(encoded.trim())
                                    .ok()?;
                                String::from_utf8(bytes).ok()
                            }),
                            _ => text(value),
                        };
                        if let Some(value) = value {
                            data.insert(key.clone(), value);
                        }
                    }
                }
                if let Some(map) = document["stringData"]
                    .as_object()
                    .filter(|_| kind == "Secret")
                {
                    for (key, value) in map {
                        if let Some(value) = text(value) {
                            data.insert(key.clone(), value);
                        }
                    }
                }
                Some(SourceObject {
                    kind,
                    namespace: metadata["namespace"]
                        .as_str()
                        .unwrap_or(cellbus_contracts::manifest::DEFAULT_NAMESPACE)
                        .to_owned(),
                    name: metadata["name"].as_str()?.to_owned(),
                    data,
                })
            })
            .collect()
    }
}

/// The kind and key reference of a source.
fn source_ref(source: &TrustSource) -> Option<(&'static str, &KeyRef)> {
    match (&source.config_map_key_ref, &source.secret_key_ref) {
        (Some(at), None) => Some(("ConfigMap", at)),
        (None, Some(at)) => Some(("Secret", at)),
        _ => None,
    }
}

/// The value `source` names among `objects` of `namespace`, or why there is none.
pub fn source_value(
    source: &TrustSource,
    namespace: &str,
    objects: &[SourceObject],
) -> Result<String, String> {
    let (kind, at) =
        source_ref(source).ok_or("a trust source names a configMapKeyRef or a secretKeyRef")?;
    let object = objects
        .iter()
        .find(|object| {
            object.kind == kind && object.namespace == namespace && object.name == at.name
        })
        .ok_or_else(|| format!("{kind} {} does not exist in namespace {namespace}", at.name))?;
    object
        .data
        .get(&at.key)
        .cloned()
        .ok_or_else(|| format!("{kind} {} has no key {}", at.name, at.key))
}

/// The trust in effect: `spec`'s own keys and authorities, then those of each source
/// (`fetch` gives a source's value, or why it cannot be had), each block read and checked
/// here so that an error names the source. The result names no source.
pub fn resolve_trust(
    spec: &TrustSpec,
    mut fetch: impl FnMut(&TrustSource) -> Result<String, String>,
) -> Result<TrustSpec, TrustError> {
    let mut effective = TrustSpec {
        from: Vec::new(),
        ..spec.clone()
    };
    for (index, source) in spec.from.iter().enumerate() {
        let error = |why: String| TrustError {
            field: format!("from[{index}]"),
            source: SignatureError::TrustSource {
                what: source.describe(),
                why,
            },
        };
        let text = fetch(source).map_err(error)?;
        let blocks = pem::parse_many(&text).map_err(|e| error(format!("not PEM: {e}")))?;
        if blocks.is_empty() {
            return Err(error("it holds no PEM block".into()));
        }
        for (number, block) in blocks.iter().enumerate() {
            let text = pem::encode(block);
            let read = match block.tag() {
                "PUBLIC KEY" => PublicKey::from_pem(&text).and_then(|key| {
                    key.check_strength(&format!("key {}", key.key_id()))?;
                    effective.keys.push(text.clone());
                    Ok(())
                }),
                "CERTIFICATE" => Authority::from_pem(&text).map(|_| {
                    effective.certificate_authorities.push(text.clone());
                }),
                other => Err(SignatureError::Certificate {
                    what: format!(
                        "a {other} block; a trust holds PUBLIC KEY and CERTIFICATE blocks"
                    ),
                    source: None,
                }),
            };
            read.map_err(|e| {
                error(format!(
                    "block {}: {}",
                    number + 1,
                    cellbus_contracts::error_chain(&e)
                ))
            })?;
        }
    }
    Ok(effective)
}

/// The errors of a pool's own keys and authorities (not its sources, which only the
/// operator or the manifests around it can read).
pub fn inline_trust_errors(spec: &CellPoolSpec) -> Vec<FieldError> {
    let Some(trust) = &spec.trust else {
        return Vec::new();
    };
    match Trust::from_spec(&TrustSpec {
        from: Vec::new(),
        ..trust.clone()
    }) {
        Ok(_) => Vec::new(),
        Err(error) => vec![trust_field_error(error)],
    }
}

fn trust_field_error(error: TrustError) -> FieldError {
    FieldError::new(
        format!("spec.trust.{}", error.field),
        cellbus_contracts::error_chain(&error.source),
    )
}

/// Module signatures judged at one moment, with the ConfigMaps and Secrets trusts may read
/// from: the [`Verifier`](cellbus_contracts::manifest::Verifier) `cellbus check`, `cellbus
/// up` and `cellbus-operator render` check manifests with, and what the operator places
/// Cells with.
#[derive(Clone, Debug)]
pub struct SignatureCheck {
    pub now: SystemTime,
    pub sources: Vec<SourceObject>,
}

impl SignatureCheck {
    /// At this moment, with no source objects.
    pub fn now() -> Self {
        SignatureCheck {
            now: SystemTime::now(),
            sources: Vec::new(),
        }
    }

    /// At this moment, reading sources from the ConfigMaps and Secrets among `documents`.
    pub fn with_documents(documents: &[serde_json::Value]) -> Self {
        SignatureCheck {
            sources: SourceObject::from_documents(documents),
            ..SignatureCheck::now()
        }
    }

    /// Who signed `cell`'s module, against `trust` in effect (see [`resolve_trust`]);
    /// `Ok(None)` without a trust: signatures are not checked.
    pub fn verify_cell(
        &self,
        cell: &CellSpec,
        trust: Option<&TrustSpec>,
    ) -> Result<Option<Signer>, SignatureError> {
        let Some(spec) = trust else {
            return Ok(None);
        };
        if !spec.from.is_empty() {
            return Err(SignatureError::TrustUnresolved);
        }
        // An unreadable trust is the pool's error, reported on the pool; its cells wait.
        let trust = Trust::from_spec(spec).map_err(|error| error.source)?;
        verify_module(
            cell.signature.as_ref(),
            cell.module.digest.as_deref(),
            &cell.service,
            &trust,
            self.now,
        )
        .map(Some)
    }

    fn effective(
        &self,
        namespace: &str,
        pool: &CellPoolSpec,
    ) -> Result<Option<TrustSpec>, TrustError> {
        pool.trust
            .as_ref()
            .map(|trust| {
                resolve_trust(trust, |source| {
                    source_value(source, namespace, &self.sources)
                })
            })
            .transpose()
    }
}

impl cellbus_contracts::manifest::Verifier for SignatureCheck {
    fn pool(&self, namespace: &str, spec: &CellPoolSpec) -> Vec<FieldError> {
        let inline = inline_trust_errors(spec);
        if !inline.is_empty() {
            return inline;
        }
        match self.effective(namespace, spec) {
            Ok(_) => Vec::new(),
            Err(error) => vec![trust_field_error(error)],
        }
    }

    fn cell_in_pool(
        &self,
        namespace: &str,
        cell: &CellSpec,
        pool: &CellPoolSpec,
    ) -> Vec<FieldError> {
        // A trust that cannot be read is the pool's error.
        let Ok(trust) = self.effective(namespace, pool) else {
            return Vec::new();
        };
        match self.verify_cell(cell, trust.as_ref()) {
            Ok(_) => Vec::new(),
            Err(error) => vec![FieldError::new(
                match error {
                    SignatureError::NotSignable => "spec.module.digest",
                    _ => "spec.signature",
                },
                format!(
                    "{}: {}",
                    error.reason(),
                    cellbus_contracts::error_chain(&error)
                ),
            )],
        }
    }
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
                    key: "the new key".into(),
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
        let private = |source: BoxError| SignatureError::PrivateKey { source };
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

/// Signs `claims` with `key`, with `algorithm` or the key's default. `certificates`
/// (DER, the key's own first, then intermediates) make a certificate signer; without
/// them the signature names the key.
pub fn sign(
    claims: SignedClaims,
    key: &PrivateKey,
    algorithm: Option<Algorithm>,
    certificates: Vec<Vec<u8>>,
) -> Result<SignatureDocument, SignatureError> {
    let algorithm = algorithm.unwrap_or_else(|| key.default_algorithm());
    let whose = format!("key {}", key.public.key_id);
    if !key.public.fits(algorithm) {
        return Err(SignatureError::AlgorithmKeyMismatch {
            algorithm,
            key: whose,
            key_type: key.public.describe(),
        });
    }
    key.public.check_strength(&whose)?;
    let signed_by = match certificates.first() {
        None => SignedBy::Key(key.public.key_id.clone()),
        Some(leaf) => {
            let (subject, certified) = certificate_key(leaf)?;
            if certified.key_id != key.public.key_id {
                return Err(SignatureError::Certificate {
                    what: format!("certificate {subject} is not for this key"),
                    source: None,
                });
            }
            SignedBy::Certificates(certificates)
        }
    };
    let message = signed_bytes(&claims)?;
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
        signed_by,
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
        source: Option<BoxError>,
    },
    #[error("signature document version {version} is not supported; this cellbus reads version {VERSION}")]
    UnsupportedVersion { version: u32 },
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
    #[error(
        "the module is not signed, and the pool runs only modules signed by a signer it trusts"
    )]
    Unsigned,
    #[error("the module is a command in the image, which no module signature covers, and the pool runs only signed modules; give the module by digest (`cellbus module push`)")]
    NotSignable,
    #[error("the signature is for module {signed}, not for this module ({actual})")]
    DigestMismatch { signed: String, actual: String },
    #[error("the signature is for service {signed}, not for {expected}")]
    ServiceMismatch { signed: String, expected: String },
    #[error("the module is signed by key {key_id}, which is not trusted")]
    UnknownKey { key_id: String },
    #[error("{key} is an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required")]
    WeakKey { key: String, bits: usize },
    #[error("algorithm {algorithm} does not fit {key} ({key_type})")]
    AlgorithmKeyMismatch {
        algorithm: Algorithm,
        key: String,
        key_type: String,
    },
    #[error("the signature does not verify with {key}: the module, its claims or the signature changed after signing")]
    BadSignature { key: String },
    #[error("certificate {subject} has expired")]
    CertificateExpired { subject: String },
    #[error("certificate {subject} is not valid yet")]
    CertificateNotYetValid { subject: String },
    #[error("certificate {subject} does not chain to a trusted authority: {detail}")]
    UnknownAuthority { subject: String, detail: String },
    #[error("certificate {subject} is not among the pool's signers (it names {})", names.join(", "))]
    SignerNotAllowed { subject: String, names: Vec<String> },
    #[error("trust source {what}: {why}")]
    TrustSource { what: String, why: String },
    #[error("the pool's trust sources have not been read yet")]
    TrustUnresolved,
    #[error("certificate: {what}")]
    Certificate {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error("not a PEM public key (SubjectPublicKeyInfo, `-----BEGIN PUBLIC KEY-----`) of Ed25519, ECDSA P-256 or RSA")]
    PublicKey {
        #[source]
        source: BoxError,
    },
    #[error("not an unencrypted PEM PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`) of Ed25519, ECDSA P-256 or RSA; `openssl pkcs8 -topk8 -nocrypt` converts other forms")]
    PrivateKey {
        #[source]
        source: BoxError,
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
            | SignatureError::InvalidService { .. } => "MalformedSignature",
            SignatureError::UnsupportedAlgorithm { .. } | SignatureError::UnsupportedKey { .. } => {
                "UnsupportedAlgorithm"
            }
            SignatureError::Unsigned | SignatureError::NotSignable => "Unsigned",
            SignatureError::DigestMismatch { .. } => "DigestMismatch",
            SignatureError::ServiceMismatch { .. } => "ServiceMismatch",
            SignatureError::UnknownKey { .. } => "UnknownKey",
            SignatureError::WeakKey { .. } => "WeakKey",
            SignatureError::AlgorithmKeyMismatch { .. } => "AlgorithmKeyMismatch",
            SignatureError::BadSignature { .. } => "BadSignature",
            SignatureError::CertificateExpired { .. } => "CertificateExpired",
            SignatureError::CertificateNotYetValid { .. } => "CertificateNotYetValid",
            SignatureError::UnknownAuthority { .. } => "UnknownAuthority",
            SignatureError::SignerNotAllowed { .. } => "SignerNotAllowed",
            SignatureError::Certificate { .. } => "BadCertificate",
            SignatureError::TrustSource { .. } => "TrustSourceUnavailable",
            SignatureError::TrustUnresolved => "TrustPending",
            SignatureError::PublicKey { .. } | SignatureError::PrivateKey { .. } => "BadKey",
            SignatureError::GenerateKey { .. } | SignatureError::Sign { .. } => "SigningFailed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DIGEST: &str = "sha256:e8d26128873ab4ea791eeefd34e0399042e365bab76a3befdb2108a4493e99f1";

    fn signed(key: &PrivateKey) -> serde_json::Value {
        let claims = SignedClaims {
            digest: DIGEST.into(),
            service: Some("echo".into()),
        };
        serde_json::to_value(sign(claims, key, None, Vec::new()).unwrap().to_manifest()).unwrap()
    }

    fn read(document: serde_json::Value) -> Result<SignatureDocument, SignatureError> {
        SignatureDocument::from_json(document.to_string().as_bytes())
    }

    #[test]
    fn a_document_of_the_wrong_shape_is_refused_with_its_reason() {
        let key = PrivateKey::generate(KeyType::Ed25519).unwrap();
        let good = signed(&key);
        let with = |field: &str, value: serde_json::Value| {
            let mut document = good.clone();
            document[field] = value;
            document
        };
        let mut both = good.clone();
        both["certificates"] = json!(["-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"]);
        let mut neither = good.clone();
        neither.as_object_mut().unwrap().remove("keyId");
        let cases = [
            (with("extra", json!(1)), "MalformedSignature"),
            (with("version", json!(2)), "MalformedSignature"),
            (with("algorithm", json!("rsa-md5")), "UnsupportedAlgorithm"),
            (
                with("signature", json!("not base64!")),
                "MalformedSignature",
            ),
            (with("keyId", json!("sha256:XYZ")), "MalformedSignature"),
            (
                with("claims", json!({"digest": DIGEST.to_uppercase()})),
                "MalformedSignature",
            ),
            (
                with("claims", json!({"digest": DIGEST, "service": "a.b"})),
                "MalformedSignature",
            ),
            (both, "MalformedSignature"),
            (neither, "MalformedSignature"),
        ];
        for (document, reason) in cases {
            let error = read(document.clone()).unwrap_err();
            assert_eq!(error.reason(), reason, "{document}: {error}");
        }
        assert!(read(good).is_ok());
    }

    #[test]
    fn a_signature_verifies_only_for_its_digest_service_key_and_bytes() {
        let key = PrivateKey::generate(KeyType::P256).unwrap();
        let other = PrivateKey::generate(KeyType::P256).unwrap();
        let mut trust = Trust::default();
        trust.add_key(key.public_key().clone());
        let document = read(signed(&key)).unwrap();
        let now = SystemTime::now();
        let signer = verify(&document, DIGEST, Some("echo"), &trust, now).unwrap();
        assert_eq!(signer.service.as_deref(), Some("echo"));
        let reason = |result: Result<Signer, SignatureError>| result.unwrap_err().reason();
        let other_digest = format!("sha256:{}", "0".repeat(64));
        assert_eq!(
            reason(verify(&document, &other_digest, None, &trust, now)),
            "DigestMismatch"
        );
        assert_eq!(
            reason(verify(&document, DIGEST, Some("billing"), &trust, now)),
            "ServiceMismatch"
        );
        let mut strangers = Trust::default();
        strangers.add_key(other.public_key().clone());
        assert_eq!(
            reason(verify(&document, DIGEST, None, &strangers, now)),
            "UnknownKey"
        );
        let mut truncated = document.clone();
        truncated.signature.pop();
        assert_eq!(
            reason(verify(&truncated, DIGEST, None, &trust, now)),
            "BadSignature"
        );
        let mut mislabelled = document;
        mislabelled.algorithm = Algorithm::Ed25519;
        assert_eq!(
            reason(verify(&mislabelled, DIGEST, None, &trust, now)),
            "AlgorithmKeyMismatch"
        );
    }

    #[test]
    fn a_trust_names_the_entry_it_cannot_use() {
        let key = PrivateKey::generate(KeyType::Ed25519).unwrap();
        let public = key.public_key().to_pem();
        let unresolved = TrustSpec {
            from: vec![TrustSource {
                config_map_key_ref: Some(KeyRef {
                    name: "signers".into(),
                    key: "keys.pem".into(),
                }),
                secret_key_ref: None,
            }],
            ..TrustSpec::default()
        };
        let error = Trust::from_spec(&unresolved).unwrap_err();
        assert_eq!(error.source.reason(), "TrustPending");

        let bundle = |text: &str| resolve_trust(&unresolved, |_| Ok(text.to_owned()));
        let resolved = bundle(&format!("{public}{public}")).unwrap();
        assert_eq!(resolved.keys.len(), 2);
        assert!(resolved.from.is_empty());
        for (text, words) in [
            ("", "holds no PEM block"),
            ("just text", "holds no PEM block"),
            (key.to_pem().as_str(), "a PRIVATE KEY block"),
        ] {
            let error = bundle(text).unwrap_err();
            assert_eq!(error.field, "from[0]");
            let message = cellbus_contracts::error_chain(&error.source);
            assert!(message.contains(words), "{text:?}: {message}");
            assert!(
                message.starts_with("trust source ConfigMap signers key keys.pem: "),
                "{message}"
            );
        }
        let missing = resolve_trust(&unresolved, |_| {
            Err("ConfigMap signers does not exist".into())
        })
        .unwrap_err();
        assert_eq!(missing.source.reason(), "TrustSourceUnavailable");
    }
}
