//! `cellbus module keygen|sign|verify`: the files around a module signature (keys,
//! modules, detached `.sig` documents) and errors that name the flag or file at fault.
//! The cryptography and the document are `cellbus_control::signature`.

use std::io::Write;
use std::path::{Path, PathBuf};

use cellbus_contracts::resources::{SignedClaims, SignerConstraints};
use cellbus_control::signature::{
    self, Algorithm, KeyType, PrivateKey, PublicKey, SignatureDocument, SignatureError, Signer,
    Trust,
};

/// The kind of key `keygen` makes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KeyAlgorithm {
    Ed25519,
    P256,
    Rsa,
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// The kind of key.
    #[arg(long, value_enum)]
    pub algorithm: KeyAlgorithm,
    /// RSA modulus size (at least 2048); RSA only. Default 3072.
    #[arg(long)]
    pub bits: Option<usize>,
    /// Where the private key goes (PEM PKCS#8, mode 0600); the public key goes next to
    /// it as `NAME.pub.pem`. Neither may exist.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The module file.
    pub file: PathBuf,
    /// The private key (PEM PKCS#8, as `keygen` or `openssl genpkey` write it).
    #[arg(long)]
    pub key: PathBuf,
    /// Bind the signature to this service: it is then refused for any other.
    #[arg(long)]
    pub service: Option<String>,
    /// The signature algorithm; by default the key's (RSA: rsa-pss-sha256).
    #[arg(long, value_parser = parse_algorithm)]
    pub algorithm: Option<Algorithm>,
    /// The key's certificate (PEM): the signature then carries it, for pools that trust
    /// its authority rather than the key.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Intermediate certificates (PEM) from `--cert` up to the trusted authority.
    #[arg(long, requires = "cert")]
    pub chain: Option<PathBuf>,
    /// Where the signature document goes; default FILE.sig.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The module file.
    pub file: PathBuf,
    /// The signature document.
    #[arg(long)]
    pub sig: PathBuf,
    /// A trusted public key or CA certificates (PEM); repeat for several.
    #[arg(long, required = true)]
    pub trust: Vec<PathBuf>,
    /// A name (subject common name or alternative name) a signing certificate must
    /// carry; repeat for several, one of which must match.
    #[arg(long)]
    pub signer: Vec<String>,
    /// The service the module is to serve; a signature bound to another is refused.
    #[arg(long)]
    pub service: Option<String>,
}

fn parse_algorithm(text: &str) -> Result<Algorithm, SignatureError> {
    text.parse()
}

/// What went wrong, naming the flag or file.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("reading {flag} {path}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; keygen never overwrites a key")]
    Exists { path: PathBuf },
    #[error("--bits applies to --algorithm rsa only")]
    BitsWithoutRsa,
    #[error("{flag} {path}")]
    Key {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error("--sig {path}")]
    Document {
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error("--bits")]
    Generate {
        #[source]
        source: SignatureError,
    },
    #[error("{flag} {path}")]
    Certificates {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("signing {file}")]
    Sign {
        file: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error("{file} is refused ({reason})", reason = source.reason())]
    Refused {
        file: PathBuf,
        #[source]
        source: SignatureError,
    },
}

/// Makes a key pair; returns the two paths written and the public key's id.
pub fn keygen(args: &KeygenArgs) -> Result<(PathBuf, PathBuf, String), SigningError> {
    let key_type = match (args.algorithm, args.bits) {
        (KeyAlgorithm::Rsa, bits) => KeyType::Rsa {
            bits: bits.unwrap_or(3072),
        },
        (_, Some(_)) => return Err(SigningError::BitsWithoutRsa),
        (KeyAlgorithm::Ed25519, None) => KeyType::Ed25519,
        (KeyAlgorithm::P256, None) => KeyType::P256,
    };
    let public_path = public_path(&args.out);
    for path in [&args.out, &public_path] {
        if path.exists() {
            return Err(SigningError::Exists { path: path.clone() });
        }
    }
    let key = PrivateKey::generate(key_type).map_err(|source| SigningError::Generate { source })?;
    write_new(&args.out, key.to_pem().as_bytes(), true)?;
    write_new(&public_path, key.public_key().to_pem().as_bytes(), false)?;
    Ok((
        args.out.clone(),
        public_path,
        key.public_key().key_id().to_owned(),
    ))
}

/// `KEY.pem` → `KEY.pub.pem`; any other name gets `.pub.pem` appended.
fn public_path(private: &Path) -> PathBuf {
    let name = private.file_name().unwrap_or_default().to_string_lossy();
    let stem = name.strip_suffix(".pem").unwrap_or(&name);
    private.with_file_name(format!("{stem}.pub.pem"))
}

fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<(), SigningError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|source| SigningError::Write {
            path: path.to_owned(),
            source,
        })
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, SigningError> {
    std::fs::read(path).map_err(|source| SigningError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn read_text(flag: &'static str, path: &Path) -> Result<String, SigningError> {
    String::from_utf8(read(flag, path)?).map_err(|error| SigningError::Read {
        flag,
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    })
}

/// Signs a module file; returns where the document went and the document.
pub fn sign(args: &SignArgs) -> Result<(PathBuf, SignatureDocument), SigningError> {
    let module = read("FILE", &args.file)?;
    let key = PrivateKey::from_pem(&read_text("--key", &args.key)?).map_err(|source| {
        SigningError::Key {
            flag: "--key",
            path: args.key.clone(),
            source,
        }
    })?;
    let mut certificates = Vec::new();
    for (flag, path) in [("--cert", &args.cert), ("--chain", &args.chain)] {
        if let Some(path) = path {
            let pem = read_text(flag, path)?;
            certificates.extend(signature::certificates_from_pem(&pem).map_err(|source| {
                SigningError::Certificates {
                    flag,
                    path: path.clone(),
                    source,
                }
            })?);
        }
    }
    let claims = SignedClaims {
        digest: cellbus_control::digest_of(&module),
        service: args.service.clone(),
    };
    let document =
        signature::sign(claims, &key, args.algorithm, certificates).map_err(|source| {
            SigningError::Sign {
                file: args.file.clone(),
                source,
            }
        })?;
    let out = args.out.clone().unwrap_or_else(|| {
        let mut name = args.file.clone().into_os_string();
        name.push(".sig");
        PathBuf::from(name)
    });
    std::fs::write(&out, document.to_json()).map_err(|source| SigningError::Write {
        path: out.clone(),
        source,
    })?;
    Ok((out, document))
}

/// Verifies a module file against its signature document and the trusted keys.
pub fn verify(args: &VerifyArgs) -> Result<Signer, SigningError> {
    let module = read("FILE", &args.file)?;
    let document = SignatureDocument::from_json(&read("--sig", &args.sig)?).map_err(|source| {
        SigningError::Document {
            path: args.sig.clone(),
            source,
        }
    })?;
    let mut trust = Trust::default();
    for path in &args.trust {
        let pem = read_text("--trust", path)?;
        let key = |source| SigningError::Key {
            flag: "--trust",
            path: path.clone(),
            source,
        };
        if pem.contains("-----BEGIN CERTIFICATE-----") {
            trust.add_authorities(&pem).map_err(key)?;
        } else {
            trust.add_key(PublicKey::from_pem(&pem).map_err(key)?);
        }
    }
    if !args.signer.is_empty() {
        trust.constrain_signers(SignerConstraints {
            common_names: args.signer.clone(),
            subject_alt_names: args.signer.clone(),
        });
    }
    signature::verify(
        &document,
        &cellbus_control::digest_of(&module),
        args.service.as_deref(),
        &trust,
        std::time::SystemTime::now(),
    )
    .map_err(|source| SigningError::Refused {
        file: args.file.clone(),
        source,
    })
}
