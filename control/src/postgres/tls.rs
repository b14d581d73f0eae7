//! TLS for PostgreSQL connections with libpq's `sslmode` meanings: reading `sslmode` and
//! `sslrootcert` out of a connection string (tokio-postgres knows three of the six modes
//! and no root certificate), the rustls connector that checks as much as the mode asks,
//! and connecting or cancelling with it. The admin connection and the runtime's cell
//! connections both go through here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{location, redact};

/// The `sslmode` values, for messages.
const MODES: &str = "disable, allow, prefer, require, verify-ca, verify-full";

/// How much a connection insists on TLS and on checking who the server is: libpq's
/// `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it. libpq tries plain text first; tokio-postgres cannot,
    /// so this is `prefer`, which connects to the same servers and encrypts more often.
    Allow,
    /// TLS when the server offers it, plain text when not; the certificate is not checked.
    /// libpq's default.
    #[default]
    Prefer,
    /// TLS or no connection. The certificate is checked only when a root certificate is
    /// given, and then as `verify-ca` does.
    Require,
    /// TLS with a certificate that chains to a trusted root, whatever host it names.
    VerifyCa,
    /// TLS with a certificate that chains to a trusted root and names the host connected
    /// to.
    VerifyFull,
}

impl SslMode {
    /// Every mode, from the least checking to the most, as libpq lists them.
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether tokio-postgres must not, may or must negotiate TLS; what it then checks is
    /// up to the connector from [`connector`].
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = TlsError;

    fn from_str(value: &str) -> Result<Self, TlsError> {
        SslMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == value)
            .ok_or_else(|| TlsError::SslMode {
                value: value.to_owned(),
            })
    }
}

/// What can go wrong reading a connection string or setting up TLS. No message holds the
/// password.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode {value:?} is not one of {MODES}")]
    SslMode { value: String },
    #[error("the value of {parameter} is not UTF-8 once percent-decoded")]
    Encoding { parameter: &'static str },
    /// The text of tokio-postgres's error, redacted, rather than the error as a source:
    /// nothing then reaches a log unredacted through the source chain.
    #[error("the connection string does not parse: {reason}")]
    Parse { reason: String },
    #[error("sslrootcert=system needs sslmode verify-full, not {mode}")]
    SystemRoots { mode: SslMode },
    #[error("reading the root certificate file {}", path.display())]
    ReadRootCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the root certificate file {} is not PEM", path.display())]
    RootCertPem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the root certificate file {} holds a certificate that cannot be a root", path.display())]
    BadRootCert {
        path: PathBuf,
        // Boxed, as rustls's errors are large and these are rare: every `Result` that
        // carries this enum stays small.
        #[source]
        source: Box<rustls::Error>,
    },
    #[error("the root certificate file {} holds no certificate", path.display())]
    NoRootCert { path: PathBuf },
    #[error("building the certificate verifier")]
    Verifier {
        #[source]
        source: rustls::client::VerifierBuilderError,
    },
    #[error("choosing the TLS versions")]
    Versions {
        #[source]
        source: Box<rustls::Error>,
    },
}

/// What can go wrong connecting (or cancelling) with [`connect`] and [`cancel`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("setting up TLS")]
    Tls {
        #[source]
        source: TlsError,
    },
    #[error("connecting to {location}")]
    Connect {
        /// Host, port and database, never the credentials.
        location: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cancelling a statement")]
    Cancel {
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// The SQLSTATE the server answered with, when it was the server that refused.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            ConnectError::Connect { source, .. } | ConnectError::Cancel { source } => source.code(),
            ConnectError::Tls { .. } => None,
        }
    }

    /// The message the server answered with, when it was the server that refused.
    pub fn db_message(&self) -> Option<&str> {
        match self {
            ConnectError::Connect { source, .. } | ConnectError::Cancel { source } => {
                source.as_db_error().map(|db| db.message())
            }
            ConnectError::Tls { .. } => None,
        }
    }
}

/// Reads a connection string, URL (`postgres://u:p@host/db?sslmode=verify-full&
/// sslrootcert=/etc/ca.pem`) or key-value (`host=… sslmode=…`), into tokio-postgres's
/// config, the sslmode (libpq's default `prefer` when none is given) and the root
/// certificate file. `sslmode` and `sslrootcert` are taken out and everything else is left
/// to tokio-postgres, which rejects `verify-ca` and `verify-full` and does not know
/// `sslrootcert`. As in libpq, `sslrootcert=system` means the well-known roots, makes
/// `verify-full` the default and refuses a weaker mode; it comes back as no file.
pub fn parse_url(url: &str) -> Result<(Config, SslMode, Option<PathBuf>), TlsError> {
    let split = match split_url(url) {
        Some(split) => split?,
        None => split_key_value(url),
    };
    let config: Config = split.rest.parse().map_err(|error: tokio_postgres::Error| {
        TlsError::Parse {
            // tokio-postgres says only "invalid connection string"; what is wrong is in
            // its source.
            reason: redact(
                &std::error::Error::source(&error)
                    .map_or_else(|| error.to_string(), cellbus_contracts::error_chain),
            ),
        }
    })?;
    let mode = split.sslmode.as_deref().map(str::parse).transpose()?;
    let (mode, root_cert) = match split.sslrootcert.as_deref() {
        Some("system") => match mode {
            None | Some(SslMode::VerifyFull) => (SslMode::VerifyFull, None),
            Some(mode) => return Err(TlsError::SystemRoots { mode }),
        },
        None | Some("") => (mode.unwrap_or_default(), None),
        Some(path) => (mode.unwrap_or_default(), Some(PathBuf::from(path))),
    };
    Ok((config, mode, root_cert))
}

/// A connection string without its TLS parameters, and their values.
#[derive(Debug, Default)]
struct Split {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Splits a `postgres://` or `postgresql://` URL; `None` when `text` is not one.
fn split_url(text: &str) -> Option<Result<Split, TlsError>> {
    let after_scheme = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|scheme| text.strip_prefix(scheme))?;
    // tokio-postgres takes everything before the first `@` as the credentials, so the query
    // is looked for only after it: a `?` in a password does not start one.
    let credentials = after_scheme.find('@').map_or(0, |at| at + 1);
    let Some(question) = after_scheme[credentials..].find('?') else {
        return Some(Ok(Split {
            rest: text.to_owned(),
            ..Split::default()
        }));
    };
    let query_at = text.len() - after_scheme.len() + credentials + question;
    let (head, query) = (&text[..query_at], &text[query_at + 1..]);
    let mut split = Split::default();
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match percent_decode(key).as_slice() {
            b"sslmode" => (&mut split.sslmode, "sslmode"),
            b"sslrootcert" => (&mut split.sslrootcert, "sslrootcert"),
            // Left as written, malformed or not, for tokio-postgres to read or refuse.
            _ => {
                kept.push(pair);
                continue;
            }
        };
        match String::from_utf8(percent_decode(value)) {
            // The last one counts, as in libpq.
            Ok(value) => *slot.0 = Some(value),
            Err(_) => return Some(Err(TlsError::Encoding { parameter: slot.1 })),
        }
    }
    split.rest = if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    Some(Ok(split))
}

/// Splits a key-value connection string, with the grammar tokio-postgres reads (values
/// bare or single-quoted, backslash escapes). Where it is malformed the rest is left as it
/// is, for tokio-postgres to refuse with its own message.
fn split_key_value(text: &str) -> Split {
    let mut split = Split::default();
    let mut kept = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let start = text.len() - rest.len();
        let key_end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        let value_at = rest[key_end..]
            .trim_start()
            .strip_prefix('=')
            .map(str::trim_start);
        let parsed = match value_at {
            Some(value_at) if !key.is_empty() => {
                key_value(value_at).map(|(value, len)| (value, value_at, len))
            }
            _ => None,
        };
        let Some((value, value_at, len)) = parsed else {
            kept.push(&text[start..]);
            break;
        };
        let end = text.len() - value_at.len() + len;
        match key {
            "sslmode" => split.sslmode = Some(value),
            "sslrootcert" => split.sslrootcert = Some(value),
            _ => kept.push(&text[start..end]),
        }
        rest = text[end..].trim_start();
    }
    split.rest = kept.join(" ");
    split
}

/// The value at the start of `text` and how many bytes it takes; `None` when it is
/// empty or an unterminated quote.
fn key_value(text: &str) -> Option<(String, usize)> {
    let quoted = text.starts_with('\'');
    let mut value = String::new();
    let mut chars = text.char_indices().skip(usize::from(quoted));
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            }
            '\'' if quoted => return Some((value, at + 1)),
            c if c.is_whitespace() && !quoted => return Some((value, at)),
            c => value.push(c),
        }
    }
    (!quoted && !value.is_empty()).then_some((value, text.len()))
}

/// `%XX` sequences decoded; a `%` not followed by two hex digits stays as it is, as
/// tokio-postgres (through the percent-encoding crate) leaves it.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The rustls connector for `mode`: how the server's certificate is checked once TLS is
/// negotiated. Whether it is negotiated is the config's `ssl_mode`, which
/// [`SslMode::negotiation`] gives and [`connect`] sets. `root_cert` is a PEM file of the
/// roots to trust; without one, `verify-ca` and `verify-full` trust the well-known
/// (Mozilla) roots, where libpq would look for `~/.postgresql/root.crt`.
pub fn connector(mode: SslMode, root_cert: Option<&Path>) -> Result<MakeRustlsConnect, TlsError> {
    // The provider is named rather than taken from the process default, so nothing here
    // depends on (or panics for lack of) a provider some other crate installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root_cert) {
        (SslMode::VerifyFull, _) => webpki(root_cert, &provider)?,
        (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => {
            Arc::new(AnyName(webpki(root_cert, &provider)?))
        }
        // libpq checks against a root file it finds in these modes too, and falls back to
        // plain text when that fails, which tokio-postgres cannot. As an attacker can make
        // them use plain text anyway, checking would only turn some connections into
        // errors.
        (SslMode::Disable | SslMode::Allow | SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(EncryptionOnly(provider.signature_verification_algorithms))
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Versions {
            source: Box::new(source),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // PostgreSQL 17 requires this ALPN name for `sslnegotiation=direct` (and libpq 17
    // always sends it); servers that do not know ALPN ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

/// Chain and host-name checks against `root_cert`'s roots, or the well-known ones.
fn webpki(
    root_cert: Option<&Path>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let roots = match root_cert {
        Some(path) => read_roots(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|source| TlsError::Verifier { source })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadRootCert {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|source| TlsError::RootCertPem {
            path: path.to_owned(),
            source,
        })?;
        roots
            .add(certificate)
            .map_err(|source| TlsError::BadRootCert {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoRootCert {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// `require` without a root certificate: libpq's meaning is encryption against
/// eavesdroppers with no claim about who the server is, and it is what Supabase's own
/// connection strings say, its certificates being signed by a Supabase CA that users
/// download separately. Any certificate is accepted, but the handshake signatures are
/// still verified: the server must hold the key of the certificate it shows, so SCRAM's
/// channel binding (which tokio-postgres uses when offered) ties the password exchange to
/// that certificate, and a man in the middle cannot replay the real server's.
#[derive(Debug)]
struct EncryptionOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the full webpki check but for the host name. `WebPkiServerVerifier`
/// checks the name last, after the chain, the validity period and revocation, so a name
/// error means everything else passed; any other error stands.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Connects with `config` as `mode` asks (its own `ssl_mode` is replaced), and runs the
/// connection's I/O in a task of its own, which ends when the client is dropped or the
/// server goes away.
pub async fn connect(
    config: &Config,
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<Client, ConnectError> {
    let tls = connector(mode, root_cert).map_err(|source| ConnectError::Tls { source })?;
    let mut config = config.clone();
    config.ssl_mode(mode.negotiation());
    let location = location(&config);
    let (client, connection) =
        config
            .connect(tls)
            .await
            .map_err(|source| ConnectError::Connect {
                location: location.clone(),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, %location, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Cancels the statement running on the connection `token` came from. The token keeps
/// whether that connection negotiated TLS; `mode` and `root_cert` (those it was made with)
/// say how the certificate is checked.
pub async fn cancel(
    token: &CancelToken,
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<(), ConnectError> {
    let tls = connector(mode, root_cert).map_err(|source| ConnectError::Tls { source })?;
    token
        .cancel_query(tls)
        .await
        .map_err(|source| ConnectError::Cancel { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_reads_back_as_it_is_written() {
        for mode in SslMode::ALL {
            assert_eq!(mode.to_string().parse::<SslMode>().unwrap(), mode);
        }
        assert_eq!(SslMode::ALL.map(|mode| mode.to_string()).join(", "), MODES);
        assert_eq!(SslMode::default(), SslMode::Prefer);
    }

    #[test]
    fn an_unknown_mode_is_named_with_the_valid_ones() {
        let error = "verify_full".parse::<SslMode>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "sslmode \"verify_full\" is not one of disable, allow, prefer, require, verify-ca, verify-full"
        );
        // libpq's spellings are lower case only.
        assert!("Require".parse::<SslMode>().is_err());
    }

    #[test]
    fn tokio_postgres_negotiates_tls_as_libpq_would() {
        use tokio_postgres::config::SslMode as Negotiation;
        let negotiation = SslMode::ALL.map(SslMode::negotiation);
        assert_eq!(
            negotiation,
            [
                Negotiation::Disable,
                Negotiation::Prefer,
                Negotiation::Prefer,
                Negotiation::Require,
                Negotiation::Require,
                Negotiation::Require
            ]
        );
    }

    #[test]
    fn percent_sequences_decode_and_stray_percents_stay() {
        assert_eq!(percent_decode("%2Fetc%2fca.pem"), b"/etc/ca.pem");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
    }

    #[test]
    fn key_value_strings_lose_only_their_tls_parameters() {
        let split = split_key_value(
            "host=db  sslmode = verify-full password='it\\'s x' sslrootcert='/a b/ca.pem' dbname=app",
        );
        assert_eq!(split.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(split.sslrootcert.as_deref(), Some("/a b/ca.pem"));
        assert_eq!(split.rest, "host=db password='it\\'s x' dbname=app");
    }
}
