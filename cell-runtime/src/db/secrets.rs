//! Where a runtime reads a cell's database credentials: in a pod, the Secret the operator
//! made, through the Kubernetes API with the pod's own service account token (the pool's
//! Role lets it read the Secrets of its own cells and nothing else); in `cellbus up`, the
//! credentials it provisioned itself, in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine as _;
use futures::future::BoxFuture;

/// The key of the connection URL in a cell's database Secret.
pub const DATABASE_URL_KEY: &str = "DATABASE_URL";

/// Reads the DATABASE_URL of a cell's Secret; `None` when there is no such Secret yet.
pub trait SecretSource: Send + Sync + 'static {
    fn database_url<'a>(
        &'a self,
        namespace: &'a str,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SourceError>>;
}

/// Why a Secret could not be read. Never holds the Secret's content.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading the service account token {path}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("asking the Kubernetes API")]
    Request(#[source] reqwest::Error),
    #[error("the Kubernetes API answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the Secret has no {DATABASE_URL_KEY}")]
    NoUrl,
    #[error("the Secret's {DATABASE_URL_KEY} is not base64-encoded UTF-8 text")]
    Encoding,
}

/// Why the Kubernetes API cannot be asked for Secrets.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the cluster CA {}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the cluster CA {}", path.display())]
    Ca {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("setting up the Kubernetes API client")]
    Build(#[source] reqwest::Error),
}

/// The Kubernetes API of the cluster the pod runs in.
pub struct KubernetesSecrets {
    http: reqwest::Client,
    api: String,
    token_file: PathBuf,
}

/// Where Kubernetes mounts a pod's service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl KubernetesSecrets {
    /// The in-cluster API, when this process runs in a pod with a service account token.
    pub fn in_cluster() -> Result<Option<Self>, ClientError> {
        let (Ok(host), Ok(port)) = (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) else {
            return Ok(None);
        };
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        if !dir.join("token").is_file() {
            return Ok(None);
        }
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Self::new(
            &format!("https://{host}:{port}"),
            &dir.join("ca.crt"),
            &dir.join("token"),
        )
        .map(Some)
    }

    /// The API at `api`, trusting the CA certificates in `ca_file`, authenticating with
    /// the token in `token_file` (read on every request: Kubernetes rotates it).
    pub fn new(api: &str, ca_file: &Path, token_file: &Path) -> Result<Self, ClientError> {
        let ca = std::fs::read(ca_file).map_err(|source| ClientError::ReadCa {
            path: ca_file.to_owned(),
            source,
        })?;
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .tls_built_in_root_certs(false)
            .timeout(std::time::Duration::from_secs(10));
        let certificates =
            reqwest::Certificate::from_pem_bundle(&ca).map_err(|source| ClientError::Ca {
                path: ca_file.to_owned(),
                source,
            })?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder.build().map_err(ClientError::Build)?;
        Ok(Self {
            http,
            api: api.trim_end_matches('/').to_owned(),
            token_file: token_file.to_owned(),
        })
    }

    async fn read(&self, namespace: &str, secret: &str) -> Result<Option<String>, SourceError> {
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|source| SourceError::Token {
                path: self.token_file.clone(),
                source,
            })?;
        let response = self
            .http
            .get(format!(
                "{}/api/v1/namespaces/{namespace}/secrets/{secret}",
                self.api
            ))
            .bearer_auth(token.trim())
            .send()
            .await
            .map_err(SourceError::Request)?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response.bytes().await.map_err(SourceError::Request)?;
        if !status.is_success() {
            // A Status object's message says what was refused (e.g. "secrets \"x\" is
            // forbidden: ..."); it carries no Secret data.
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            return Err(SourceError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        let secret: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| SourceError::Encoding)?;
        let encoded = secret["data"][DATABASE_URL_KEY]
            .as_str()
            .ok_or(SourceError::NoUrl)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| SourceError::Encoding)?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| SourceError::Encoding)
    }
}

impl SecretSource for KubernetesSecrets {
    fn database_url<'a>(
        &'a self,
        namespace: &'a str,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SourceError>> {
        Box::pin(self.read(namespace, secret))
    }
}

/// Credentials held in memory, by namespace and Secret name: what `cellbus up` provisioned.
#[derive(Default)]
pub struct LocalSecrets {
    urls: RwLock<HashMap<(String, String), String>>,
}

impl LocalSecrets {
    pub fn insert(&self, namespace: &str, secret: &str, url: String) {
        self.urls
            .write()
            .expect("secrets lock")
            .insert((namespace.to_owned(), secret.to_owned()), url);
    }
}

impl SecretSource for LocalSecrets {
    fn database_url<'a>(
        &'a self,
        namespace: &'a str,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SourceError>> {
        let url = self
            .urls
            .read()
            .expect("secrets lock")
            .get(&(namespace.to_owned(), secret.to_owned()))
            .cloned();
        Box::pin(async move { Ok(url) })
    }
}
