//! NATS connection settings from flags and environment variables.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, ServerAddr};

use crate::{redact_url, Error};

/// How to reach and log in to NATS. Each flag also reads an environment variable.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NatsArgs {
    /// Server URL(s), comma separated. Credentials in a URL (`nats://user:password@host`,
    /// `nats://token@host`) are used when no flag gives any.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub url: String,
    #[command(flatten)]
    pub credentials: NatsCredentials,
}

/// How to log in to NATS, apart from where it is: the operator reaches several servers
/// with one set of credentials.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NatsCredentials {
    /// User name (with --nats-password).
    #[arg(long = "nats-user", env = "NATS_USER", requires = "password")]
    pub user: Option<String>,
    /// Password (with --nats-user).
    #[arg(long = "nats-password", env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Authentication token.
    #[arg(long = "nats-token", env = "NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding an nkey seed (`SU…`).
    #[arg(long = "nats-nkey-file", env = "NATS_NKEY_FILE")]
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (JWT and seed).
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) to trust for TLS; setting it requires TLS.
    #[arg(long = "nats-ca", env = "NATS_CA")]
    pub ca: Option<PathBuf>,
    /// A directory (a mounted Secret) whose files `creds`, `nkey` and `ca.crt` are used
    /// like --nats-creds, --nats-nkey-file and --nats-ca when present; absent ones are
    /// skipped. The flags win over the files.
    #[arg(long = "nats-credentials-dir", env = "NATS_CREDENTIALS_DIR")]
    pub dir: Option<PathBuf>,
}

/// File of a credentials directory holding a `.creds` file (JWT and seed).
pub const CREDS_FILE: &str = "creds";
/// File of a credentials directory holding an nkey seed.
pub const NKEY_FILE: &str = "nkey";
/// File of a credentials directory holding the CA certificate to trust.
pub const CA_FILE: &str = "ca.crt";

impl NatsCredentials {
    /// These credentials with the files of the credentials directory that exist filled
    /// in where no flag names a file.
    fn resolved(&self) -> Self {
        let Some(dir) = &self.dir else {
            return self.clone();
        };
        let present = |name: &str| Some(dir.join(name)).filter(|path| path.is_file());
        Self {
            creds: self.creds.clone().or_else(|| present(CREDS_FILE)),
            nkey_file: self.nkey_file.clone().or_else(|| present(NKEY_FILE)),
            ca: self.ca.clone().or_else(|| present(CA_FILE)),
            ..self.clone()
        }
    }
}

impl NatsArgs {
    /// Settings for `url` with no credentials.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            credentials: NatsCredentials::default(),
        }
    }
}

/// Connects, retrying in the background when the server is not up yet and reconnecting
/// for ever after, so a NATS restart never needs a restart of ours. For long-running
/// servers.
pub async fn connect(args: &NatsArgs, name: &str) -> Result<Client, Error> {
    connect_with(args, name, |options| options).await
}

/// [`connect`] with at most `capacity` messages waiting in each subscription: a
/// subscriber that cannot keep up loses messages past it (logged as a slow consumer)
/// instead of holding an unbounded backlog in memory.
pub async fn connect_bounded(
    args: &NatsArgs,
    name: &str,
    capacity: usize,
) -> Result<Client, Error> {
    connect_with(args, name, |options| {
        options.subscription_capacity(capacity)
    })
    .await
}

async fn connect_with(
    args: &NatsArgs,
    name: &str,
    adjust: impl FnOnce(ConnectOptions) -> ConnectOptions,
) -> Result<Client, Error> {
    let (servers, in_url) = servers(&args.url)?;
    adjust(options(args, in_url).await?)
        .name(name)
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(|source| connect_error(&args.url, source))
}

/// Connects once and fails at once when the server cannot be reached. For commands.
pub async fn connect_once(args: &NatsArgs, name: &str) -> Result<Client, Error> {
    let (servers, in_url) = servers(&args.url)?;
    options(args, in_url)
        .await?
        .name(name)
        .connect(servers)
        .await
        .map_err(|source| connect_error(&args.url, source))
}

fn connect_error(url: &str, source: async_nats::ConnectError) -> Error {
    Error::Connect {
        url: redact_url(url).into_owned(),
        source,
    }
}

/// Credentials written into a server URL.
#[derive(Debug, PartialEq, Eq)]
enum UrlCredentials {
    UserPassword(String, String),
    Token(String),
}

/// The servers of a comma-separated URL list without their credentials, and the
/// credentials of the first URL that has some. async-nats authenticates with its options
/// only, and logs server addresses, userinfo and all, while it connects: credentials
/// leave the URLs here.
fn servers(url: &str) -> Result<(Vec<ServerAddr>, Option<UrlCredentials>), Error> {
    let mut found = None;
    let mut servers = Vec::new();
    for piece in url.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parsed: ServerAddr = piece.parse().map_err(|error: std::io::Error| {
            connect_error(
                url,
                async_nats::ConnectError::with_source(ConnectErrorKind::ServerParse, error),
            )
        })?;
        let mut bare = parsed.into_inner();
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = match (bare.username(), bare.password()) {
            ("", None) => None,
            (user, Some(password)) => {
                Some(UrlCredentials::UserPassword(decode(user), decode(password)))
            }
            (token, None) => Some(UrlCredentials::Token(decode(token))),
        };
        if found.is_none() {
            found = credentials;
        }
        // Cannot fail: a NATS URL has a host, so it can have credentials.
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        servers.push(ServerAddr::from_url(bare).map_err(|error| {
            connect_error(
                url,
                async_nats::ConnectError::with_source(ConnectErrorKind::ServerParse, error),
            )
        })?);
    }
    Ok((servers, found))
}

async fn options(args: &NatsArgs, in_url: Option<UrlCredentials>) -> Result<ConnectOptions, Error> {
    let args = &args.credentials.resolved();
    let mut options = match &args.creds {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| Error::Credentials {
                path: path.display().to_string(),
                source,
            })?,
        None => ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&args.user, &args.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &args.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &args.nkey_file {
        let seed = std::fs::read_to_string(path).map_err(|source| Error::Credentials {
            path: path.display().to_string(),
            source,
        })?;
        options = options.nkey(seed.trim().to_owned());
    }
    let flagged = args.user.is_some()
        || args.token.is_some()
        || args.creds.is_some()
        || args.nkey_file.is_some();
    match in_url {
        _ if flagged => {}
        Some(UrlCredentials::UserPassword(user, password)) => {
            options = options.user_and_password(user, password);
        }
        Some(UrlCredentials::Token(token)) => options = options.token(token),
        None => {}
    }
    if let Some(ca) = &args.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(options
        .event_callback(|event| async move {
            use async_nats::Event;
            match event {
                Event::Connected => tracing::info!("connected to NATS"),
                Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                Event::SlowConsumer(sid) => tracing::warn!(
                    subscription = sid,
                    "messages dropped: a subscription fell behind (slow consumer)"
                ),
                Event::ServerError(error) => tracing::warn!(%error, "NATS server error"),
                Event::ClientError(error) => tracing::warn!(%error, "NATS client error"),
                other => tracing::debug!(event = %other, "NATS connection event"),
            }
        })
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(2_000))
        }))
}
