//! Keys, certificates and signatures made by the `openssl` command-line tool, an
//! independent producer: what the tests verify was not made by the code under test.
//! Also the matrix of signed-module cases every verifier (the CLI, the operator, a real
//! runtime) is run against.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::HarnessError;

const INSTALL_OPENSSL: &str = "sudo apt-get install -y openssl";

/// A key pair's files.
#[derive(Clone, Debug)]
pub struct Key {
    pub private: PathBuf,
    pub public: PathBuf,
    pub kind: KeyKind,
}

/// The kind of key `openssl genpkey` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    P256,
    Rsa(u32),
}

/// A certificate and its key.
#[derive(Clone, Debug)]
pub struct Cert {
    pub name: String,
    pub key: Key,
    pub pem: PathBuf,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From now for ten years.
    Current,
    /// 2020 to 2021.
    Expired,
    /// 2045 to 2046.
    NotYetValid,
}

/// What a certificate is for.
#[derive(Clone, Debug)]
pub enum Role {
    /// An intermediate authority.
    Authority,
    /// A code signer with these subject alternative names (`URI:…`, `email:…`).
    Signer { alt_names: Vec<String> },
}

/// A directory of keys and certificates, removed when dropped.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new() -> Result<Self, HarnessError> {
        crate::find_binary("openssl", &[], INSTALL_OPENSSL)?;
        let dir = tempfile::Builder::new()
            .prefix("cellbus-pki-")
            .tempdir()
            .map_err(HarnessError::io("making the PKI directory"))?;
        Ok(Self { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new key pair `name.key.pem`, `name.pub.pem`.
    pub fn key(&self, name: &str, kind: KeyKind) -> Result<Key, HarnessError> {
        let private = self.path(&format!("{name}.key.pem"));
        let public = self.path(&format!("{name}.pub.pem"));
        let mut genpkey = Command::new("openssl");
        genpkey.arg("genpkey").arg("-out").arg(&private);
        match kind {
            KeyKind::Ed25519 => genpkey.args(["-algorithm", "ed25519"]),
            KeyKind::P256 => {
                genpkey.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
            }
            KeyKind::Rsa(bits) => genpkey
                .args(["-algorithm", "RSA", "-pkeyopt"])
                .arg(format!("rsa_keygen_bits:{bits}")),
        };
        run(&mut genpkey, "openssl genpkey")?;
        run(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public),
            "openssl pkey -pubout",
        )?;
        Ok(Key {
            private,
            public,
            kind,
        })
    }

    /// A self-signed root authority `CN=name`, valid for ten years.
    pub fn root(&self, name: &str, kind: KeyKind) -> Result<Cert, HarnessError> {
        let key = self.key(name, kind)?;
        let pem = self.path(&format!("{name}.crt.pem"));
        run(
            Command::new("openssl")
                .args(["req", "-x509", "-new", "-key"])
                .arg(&key.private)
                .arg("-subj")
                .arg(format!("/CN={name}"))
                .args(["-days", "3650", "-out"])
                .arg(&pem)
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
            "openssl req -x509",
        )?;
        // Directory, database and serial of `openssl ca` for what this root issues.
        let ca = self.path(&format!("{name}.ca"));
        std::fs::create_dir_all(&ca).map_err(HarnessError::io("making the CA directory"))?;
        std::fs::write(ca.join("index.txt"), "").map_err(HarnessError::io("index.txt"))?;
        Ok(Cert {
            name: name.to_owned(),
            key,
            pem,
        })
    }

    /// A certificate `CN=name` issued by `issuer`, through `openssl ca` so that its
    /// validity can lie in the past or the future.
    pub fn issue(
        &self,
        name: &str,
        kind: KeyKind,
        issuer: &Cert,
        role: Role,
        validity: Validity,
    ) -> Result<Cert, HarnessError> {
        let key = self.key(name, kind)?;
        let csr = self.path(&format!("{name}.csr"));
        run(
            Command::new("openssl")
                .args(["req", "-new", "-key"])
                .arg(&key.private)
                .arg("-subj")
                .arg(format!("/CN={name}"))
                .arg("-out")
                .arg(&csr),
            "openssl req -new",
        )?;
        let ca = self.path(&format!("{}.ca", issuer.name));
        std::fs::create_dir_all(&ca).map_err(HarnessError::io("making the CA directory"))?;
        let index = ca.join("index.txt");
        if !index.exists() {
            std::fs::write(&index, "").map_err(HarnessError::io("index.txt"))?;
        }
        let config = self.path(&format!("{name}.cnf"));
        let extensions = match role {
            Role::Authority => "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n".to_owned(),
            Role::Signer { alt_names } => format!(
                "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = codeSigning\n{}",
                if alt_names.is_empty() {
                    String::new()
                } else {
                    format!("subjectAltName = {}\n", alt_names.join(","))
                }
            ),
        };
        let text = format!(
            "[ca]\ndefault_ca = issuer\n\
             [issuer]\ndir = {dir}\ndatabase = {dir}/index.txt\nnew_certs_dir = {dir}\n\
             rand_serial = yes\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
             copy_extensions = none\nemail_in_dn = no\n\
             [any]\ncommonName = supplied\n\
             [extensions]\n{extensions}",
            dir = ca.display()
        );
        std::fs::write(&config, text).map_err(HarnessError::io("writing the CA config"))?;
        let pem = self.path(&format!("{name}.crt.pem"));
        let (start, end) = match validity {
            Validity::Current => (None, None),
            Validity::Expired => (Some("200101000000Z"), Some("210101000000Z")),
            Validity::NotYetValid => (Some("450101000000Z"), Some("460101000000Z")),
        };
        let mut command = Command::new("openssl");
        command
            .args(["ca", "-batch", "-notext", "-config"])
            .arg(&config)
            .args(["-extensions", "extensions", "-in"])
            .arg(&csr)
            .arg("-cert")
            .arg(&issuer.pem)
            .arg("-keyfile")
            .arg(&issuer.key.private)
            .arg("-out")
            .arg(&pem);
        match (start, end) {
            (Some(start), Some(end)) => command.args(["-startdate", start, "-enddate", end]),
            _ => command.args(["-days", "3650"]),
        };
        run(&mut command, "openssl ca")?;
        Ok(Cert {
            name: name.to_owned(),
            key,
            pem,
        })
    }

    /// `sha256:` and the hex sha256 of `bytes`, by `openssl dgst`.
    pub fn digest(&self, bytes: &[u8]) -> Result<String, HarnessError> {
        let file = self.scratch(bytes)?;
        let out = run(
            Command::new("openssl")
                .args(["dgst", "-sha256", "-r"])
                .arg(&file),
            "openssl dgst",
        )?;
        let hex = out.split_whitespace().next().unwrap_or_default();
        Ok(format!("sha256:{hex}"))
    }

    /// The key id of a public key: the sha256 of its DER SubjectPublicKeyInfo.
    pub fn key_id(&self, key: &Key) -> Result<String, HarnessError> {
        let der = self.path("scratch.der");
        run(
            Command::new("openssl")
                .args(["pkey", "-pubin", "-in"])
                .arg(&key.public)
                .args(["-outform", "DER", "-out"])
                .arg(&der),
            "openssl pkey -outform DER",
        )?;
        let bytes = std::fs::read(&der).map_err(HarnessError::io("reading the DER key"))?;
        self.digest(&bytes)
    }

    /// A signature over `message` by `key` with `algorithm` (as the document names it),
    /// made by `openssl`.
    pub fn sign(
        &self,
        key: &Key,
        algorithm: &str,
        message: &[u8],
    ) -> Result<Vec<u8>, HarnessError> {
        let input = self.scratch(message)?;
        let output = self.path("scratch.sig");
        let mut command = Command::new("openssl");
        if algorithm == "ed25519" {
            // Ed25519 signs the message itself, not a digest of it.
            command
                .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
                .arg(&key.private)
                .arg("-in")
                .arg(&input);
        } else {
            command.args(["dgst", "-sha256"]);
            if algorithm == "rsa-pss-sha256" {
                command.args([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:32",
                ]);
            }
            command
                .arg("-sign")
                .arg(&key.private)
                .arg("-out")
                .arg(&output)
                .arg(&input);
        }
        if algorithm == "ed25519" {
            command.arg("-out").arg(&output);
        }
        run(&mut command, "openssl sign")?;
        std::fs::read(&output).map_err(HarnessError::io("reading the signature"))
    }

    fn scratch(&self, bytes: &[u8]) -> Result<PathBuf, HarnessError> {
        let file = self.path("scratch.bin");
        std::fs::write(&file, bytes).map_err(HarnessError::io("writing a scratch file"))?;
        Ok(file)
    }
}

/// Reads a file the PKI wrote.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The bytes a module signature signs (the encoding `cellbus_control::signature`
/// documents), written out here again so that a change there breaks these tests.
pub fn signed_bytes(digest: &str, service: Option<&str>) -> Vec<u8> {
    let mut text = format!("cellbus-module-signature-v1\ndigest {digest}\n");
    if let Some(service) = service {
        text.push_str(&format!("service {service}\n"));
    }
    text.into_bytes()
}

fn run(command: &mut Command, what: &str) -> Result<String, HarnessError> {
    let output = command
        .output()
        .map_err(HarnessError::io(format!("running {what}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(HarnessError::Command {
            what: what.to_owned(),
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Which of the two test pools a case runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustKind {
    /// Trusts raw keys.
    Keys,
    /// Trusts a root authority, and only signers named `spiffe://cellbus.test/release`.
    Certificates,
}

/// One signed module and what every verifier must make of it.
#[derive(Clone, Debug)]
pub struct Case {
    /// Also the service it is deployed as.
    pub service: String,
    pub trust: TrustKind,
    /// The module as deployed (the Cell's digest is its digest).
    pub module: Vec<u8>,
    /// The Cell's `spec.signature`.
    pub signature: Option<Value>,
    /// `None`: it verifies; otherwise the reason it is refused.
    pub refused: Option<&'static str>,
}

/// The URI a release signer's certificate names, the one name the certificate pool allows.
pub const RELEASE_SIGNER: &str = "spiffe://cellbus.test/release";

/// The keys and certificates of the cases, and the trust of each pool.
pub struct Signatures {
    pub pki: Pki,
    pub keys: Vec<(String, Key)>,
    pub root: Cert,
    pub cases: Vec<Case>,
}

impl Signatures {
    /// Every case of the matrix for `module`, each deployed as the service it is named
    /// after. Signatures are made by `openssl`, over the encoding written out above.
    pub fn new(module: &[u8]) -> Result<Self, HarnessError> {
        let pki = Pki::new()?;
        let digest = pki.digest(module)?;
        let mut keys = Vec::new();
        let mut cases = Vec::new();
        let key_document = |pki: &Pki,
                            key: &Key,
                            algorithm: &str,
                            digest: &str,
                            service: Option<&str>|
         -> Result<Value, HarnessError> {
            let signature = pki.sign(key, algorithm, &signed_bytes(digest, service))?;
            let mut claims = json!({"digest": digest});
            if let Some(service) = service {
                claims["service"] = json!(service);
            }
            Ok(json!({
                "version": 1,
                "algorithm": algorithm,
                "claims": claims,
                "keyId": pki.key_id(key)?,
                "signature": base64::engine::general_purpose::STANDARD.encode(signature),
            }))
        };
        let good = |service: &str, signature: Value| Case {
            service: service.to_owned(),
            trust: TrustKind::Keys,
            module: module.to_vec(),
            signature: Some(signature),
            refused: None,
        };

        // One good signature per algorithm, each bound to its service.
        for (service, kind, algorithm) in [
            ("signed-ed25519", KeyKind::Ed25519, "ed25519"),
            ("signed-p256", KeyKind::P256, "ecdsa-p256-sha256"),
            ("signed-rsa-pss", KeyKind::Rsa(2048), "rsa-pss-sha256"),
            ("signed-rsa-pkcs1", KeyKind::Rsa(3072), "rsa-pkcs1-sha256"),
        ] {
            let key = pki.key(service, kind)?;
            let document = key_document(&pki, &key, algorithm, &digest, Some(service))?;
            cases.push(good(service, document));
            keys.push((service.to_owned(), key));
        }
        let ed25519 = keys[0].1.clone();

        // Rotation: keys A and B both trusted; a module signed by either runs.
        for name in ["rotate-a", "rotate-b"] {
            let key = pki.key(name, KeyKind::P256)?;
            cases.push(good(
                name,
                key_document(&pki, &key, "ecdsa-p256-sha256", &digest, None)?,
            ));
            keys.push((name.to_owned(), key));
        }

        // A module changed after signing: one byte.
        let mut tampered = module.to_vec();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 0x01;
        cases.push(Case {
            service: "tampered".into(),
            module: tampered,
            refused: Some("DigestMismatch"),
            ..good(
                "tampered",
                key_document(&pki, &ed25519, "ed25519", &digest, None)?,
            )
        });
        // The signature changed: one byte.
        let mut flipped = key_document(&pki, &ed25519, "ed25519", &digest, None)?;
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(flipped["signature"].as_str().expect("signature"))
            .expect("base64");
        bytes[0] ^= 0x01;
        flipped["signature"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        cases.push(Case {
            refused: Some("BadSignature"),
            ..good("flipped", flipped)
        });
        // Signed for another service: replayed onto this one.
        cases.push(Case {
            refused: Some("ServiceMismatch"),
            ..good(
                "replayed",
                key_document(&pki, &ed25519, "ed25519", &digest, Some("billing"))?,
            )
        });
        // Signed by a key the pool does not trust.
        let stranger = pki.key("stranger", KeyKind::Ed25519)?;
        cases.push(Case {
            refused: Some("UnknownKey"),
            ..good(
                "untrusted",
                key_document(&pki, &stranger, "ed25519", &digest, None)?,
            )
        });
        // No signature at all.
        cases.push(Case {
            signature: None,
            refused: Some("Unsigned"),
            ..good("unsigned", json!(null))
        });

        // Certificates: a root, an intermediate, signers under each.
        let root = pki.root("cellbus-test-root", KeyKind::P256)?;
        let intermediate = pki.issue(
            "cellbus-test-intermediate",
            KeyKind::P256,
            &root,
            Role::Authority,
            Validity::Current,
        )?;
        let other_root = pki.root("other-root", KeyKind::P256)?;
        let release = || Role::Signer {
            alt_names: vec![
                format!("URI:{RELEASE_SIGNER}"),
                "email:release@cellbus.test".into(),
            ],
        };
        let chain_document = |pki: &Pki,
                              leaf: &Cert,
                              chain: &[&Cert],
                              algorithm: &str|
         -> Result<Value, HarnessError> {
            let signature = pki.sign(&leaf.key, algorithm, &signed_bytes(&digest, None))?;
            let certificates: Vec<String> = std::iter::once(leaf)
                .chain(chain.iter().copied())
                .map(|cert| read(&cert.pem))
                .collect();
            Ok(json!({
                "version": 1,
                "algorithm": algorithm,
                "claims": {"digest": digest},
                "certificates": certificates,
                "signature": base64::engine::general_purpose::STANDARD.encode(signature),
            }))
        };
        let certificate_case =
            |service: &str, document: Value, refused: Option<&'static str>| Case {
                service: service.to_owned(),
                trust: TrustKind::Certificates,
                module: module.to_vec(),
                signature: Some(document),
                refused,
            };
        let direct = pki.issue(
            "release-direct",
            KeyKind::P256,
            &root,
            release(),
            Validity::Current,
        )?;
        cases.push(certificate_case(
            "cert-direct",
            chain_document(&pki, &direct, &[], "ecdsa-p256-sha256")?,
            None,
        ));
        let chained = pki.issue(
            "release-chained",
            KeyKind::Rsa(2048),
            &intermediate,
            release(),
            Validity::Current,
        )?;
        cases.push(certificate_case(
            "cert-chained",
            chain_document(&pki, &chained, &[&intermediate], "rsa-pss-sha256")?,
            None,
        ));
        cases.push(certificate_case(
            "cert-no-intermediate",
            chain_document(&pki, &chained, &[], "rsa-pss-sha256")?,
            Some("UnknownAuthority"),
        ));
        let expired = pki.issue(
            "release-expired",
            KeyKind::P256,
            &root,
            release(),
            Validity::Expired,
        )?;
        cases.push(certificate_case(
            "cert-expired",
            chain_document(&pki, &expired, &[], "ecdsa-p256-sha256")?,
            Some("CertificateExpired"),
        ));
        let early = pki.issue(
            "release-early",
            KeyKind::P256,
            &root,
            release(),
            Validity::NotYetValid,
        )?;
        cases.push(certificate_case(
            "cert-not-yet-valid",
            chain_document(&pki, &early, &[], "ecdsa-p256-sha256")?,
            Some("CertificateNotYetValid"),
        ));
        let foreign = pki.issue(
            "release-foreign",
            KeyKind::P256,
            &other_root,
            release(),
            Validity::Current,
        )?;
        cases.push(certificate_case(
            "cert-wrong-ca",
            chain_document(&pki, &foreign, &[], "ecdsa-p256-sha256")?,
            Some("UnknownAuthority"),
        ));
        let intern = pki.issue(
            "intern",
            KeyKind::P256,
            &root,
            Role::Signer {
                alt_names: vec!["URI:spiffe://cellbus.test/intern".into()],
            },
            Validity::Current,
        )?;
        cases.push(certificate_case(
            "cert-san-mismatch",
            chain_document(&pki, &intern, &[], "ecdsa-p256-sha256")?,
            Some("SignerNotAllowed"),
        ));
        let weak = pki.issue(
            "release-weak",
            KeyKind::Rsa(1024),
            &root,
            release(),
            Validity::Current,
        )?;
        cases.push(certificate_case(
            "cert-rsa-1024",
            chain_document(&pki, &weak, &[], "rsa-pkcs1-sha256")?,
            Some("WeakKey"),
        ));
        Ok(Self {
            pki,
            keys,
            root,
            cases,
        })
    }

    /// The `spec.trust` of the pool of `kind`.
    pub fn trust(&self, kind: TrustKind) -> Value {
        match kind {
            TrustKind::Keys => json!({
                "keys": self.keys.iter().map(|(_, key)| read(&key.public)).collect::<Vec<_>>(),
            }),
            TrustKind::Certificates => json!({
                "certificateAuthorities": [read(&self.root.pem)],
                "signers": {"subjectAltNames": [RELEASE_SIGNER]},
            }),
        }
    }

    /// The trust of the key pool after rotating away from key A: everything but it.
    pub fn trust_without(&self, key: &str) -> Value {
        json!({
            "keys": self
                .keys
                .iter()
                .filter(|(name, _)| name != key)
                .map(|(_, key)| read(&key.public))
                .collect::<Vec<_>>(),
        })
    }
}
