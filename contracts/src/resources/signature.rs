//! Module signatures as manifests carry them: a Cell's detached signature (the document
//! `cellbus module sign` writes, pasted as it is) and the signers a CellPool trusts. The
//! cryptography lives in `cellbus_control::signature`; these are the shapes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A detached signature over a module's claims: its digest and, optionally, the one
/// service it may serve. `cellbus module sign` writes it as JSON, which is also YAML, so
/// the file goes under `spec.signature` unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.keyId) || has(self.certificates)",
        "message": "a signature names its key (keyId) or carries its certificate chain (certificates)"
    }
]))]
pub struct ModuleSignature {
    /// The document's version: 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// `ed25519`, `ecdsa-p256-sha256`, `rsa-pss-sha256` or `rsa-pkcs1-sha256`.
    #[schemars(length(min = 1, max = 64))]
    pub algorithm: String,
    /// What the signer vouches for.
    pub claims: SignedClaims,
    /// `sha256:` and the hex sha256 of the signer's DER SubjectPublicKeyInfo: the
    /// trusted key that signed, when the signer is a raw key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 71))]
    pub key_id: Option<String>,
    /// The signer's certificate and the intermediates to a trusted authority, leaf first,
    /// each PEM; when the signer is a certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(max = 16384)))]
    pub certificates: Vec<String>,
    /// The signature, base64.
    #[schemars(length(min = 1, max = 2048))]
    pub signature: String,
}

/// What a module signature vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedClaims {
    /// The module's digest, `sha256:` and 64 lowercase hex digits.
    #[schemars(pattern(super::DIGEST_PATTERN))]
    pub digest: String,
    /// The only service the module may serve; without it, any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub service: Option<String>,
}

/// The signers a pool trusts. With a trust, every Cell of the pool must carry a signature
/// that verifies against one of them; a Cell whose signature does not is never served.
/// Several keys and authorities at once, so that signers can rotate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.keys) ? size(self.keys) : 0) + (has(self.certificateAuthorities) ? size(self.certificateAuthorities) : 0) + (has(self.from) ? size(self.from) : 0) > 0",
        "message": "a trust lists at least one key, certificate authority or source"
    },
    {
        "rule": "!has(self.signers) || (has(self.certificateAuthorities) && size(self.certificateAuthorities) > 0) || (has(self.from) && size(self.from) > 0)",
        "message": "signers constrain certificates; list the certificateAuthorities that issue them"
    }
]))]
pub struct TrustSpec {
    /// Public keys (PEM SubjectPublicKeyInfo, `-----BEGIN PUBLIC KEY-----`) of Ed25519,
    /// ECDSA P-256 or RSA of at least 2048 bits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 16384)))]
    pub keys: Vec<String>,
    /// CA certificates (PEM) whose certificates may sign, directly or through
    /// intermediates the signature carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 16384)))]
    pub certificate_authorities: Vec<String>,
    /// More keys and authorities, kept in ConfigMaps or Secrets of the pool's namespace
    /// (a trust-manager bundle, cert-manager's `ca.crt`): every `PUBLIC KEY` block of the
    /// value is a trusted key, every `CERTIFICATE` block an authority. Read again at every
    /// reconcile of the pool, so a rotated bundle takes effect without touching the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub from: Vec<TrustSource>,
    /// Which certificates of those authorities may sign; without it, any they issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signers: Option<SignerConstraints>,
}

/// Names a signing certificate must carry: one of the common names, or one of the
/// subject alternative names (DNS name, email or URI), matched exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.commonNames) ? size(self.commonNames) : 0) + (has(self.subjectAltNames) ? size(self.subjectAltNames) : 0) > 0",
        "message": "signers name at least one common name or subject alternative name"
    }
]))]
pub struct SignerConstraints {
    /// Subject common names (`CN=`) accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub common_names: Vec<String>,
    /// Subject alternative names accepted: a DNS name, an email or a URI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 1024)))]
    pub subject_alt_names: Vec<String>,
}

/// Where more trusted keys and authorities are kept: one key of a ConfigMap or a Secret in
/// the pool's namespace, holding PEM blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.configMapKeyRef) != has(self.secretKeyRef)",
        "message": "a trust source is a configMapKeyRef or a secretKeyRef"
    }
]))]
pub struct TrustSource {
    /// A key of a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
    /// A key of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
}

/// One key of a ConfigMap or Secret in the pool's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// The object's name.
    #[schemars(length(min = 1, max = 253), pattern(super::OBJECT_NAME_PATTERN))]
    pub name: String,
    /// The key, such as `ca.crt` or `signers.pem`.
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

impl TrustSource {
    /// `ConfigMap NAME key KEY`, for messages.
    pub fn describe(&self) -> String {
        match (&self.config_map_key_ref, &self.secret_key_ref) {
            (Some(at), _) => format!("ConfigMap {} key {}", at.name, at.key),
            (None, Some(at)) => format!("Secret {} key {}", at.name, at.key),
            (None, None) => "a source naming nothing".into(),
        }
    }
}
