//! How the operator and the runtime write their logs: to stderr, filtered by `RUST_LOG`,
//! as text for people or as one JSON object per line for log collectors.

use tracing_subscriber::EnvFilter;

/// The format of log lines (`--log-format`, `CELLBUS_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (service, verb, correlation id).
    Json,
}

/// The `--log-format` flag both binaries take.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(
        long = "log-format",
        global = true,
        env = "CELLBUS_LOG_FORMAT",
        default_value = "text"
    )]
    pub format: LogFormat,
}

/// Installs the process's log subscriber: `RUST_LOG` when set, `default` otherwise.
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
}
