//! Real servers for tests: a private `nats-server -js` and a private PostgreSQL, each on a
//! free loopback port with its own temporary directory, stopped when dropped. Setting
//! `CELLBUS_TEST_NATS_URL` or `CELLBUS_TEST_DATABASE_URL` points tests at a server of your
//! own instead. A missing server binary is a test failure naming the command that
//! installs it, never a skipped test.

#![forbid(unsafe_code)]

mod cluster;
mod logs;
mod nats;
mod pgbouncer;
pub mod pki;
mod postgres;

pub use cluster::NatsCluster;
pub use logs::CapturedLogs;
pub use nats::NatsServer;
pub use pgbouncer::PgBouncer;
pub use postgres::Postgres;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("`{binary}` was not found{searched}; install it with: {install}")]
    Missing {
        binary: &'static str,
        searched: String,
        install: &'static str,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {output}")]
    Command { what: String, output: String },
    #[error("the server was given by URL, not started by the test, so it cannot be stopped")]
    NotOwned,
    #[error("{server} did not become ready within {seconds} s; its log:\n{log}")]
    NotReady {
        server: &'static str,
        seconds: u64,
        log: String,
    },
}

impl HarnessError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// Finds `binary` on PATH, then in the project's own virtualenv (where the setup script
/// installs nats-server), then in `extra` directories.
fn find_binary(
    binary: &'static str,
    extra: &[PathBuf],
    install: &'static str,
) -> Result<PathBuf, HarnessError> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin");
    let fallback = std::env::join_paths(std::iter::once(&venv).chain(extra));
    which::which(binary)
        .ok()
        .or_else(|| {
            let cwd = std::env::current_dir().ok()?;
            which::which_in(binary, fallback.ok(), cwd).ok()
        })
        .ok_or_else(|| HarnessError::Missing {
            binary,
            searched: if extra.is_empty() {
                " on PATH or in .venv/bin".into()
            } else {
                format!(
                    " on PATH, in .venv/bin or in {}",
                    extra
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            install,
        })
}

/// Polls `ready` every few milliseconds until it yields a value or `limit` passes.
fn wait_for<T>(limit: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A loopback port nothing listens on now (a server binds it a moment later).
fn free_port() -> Result<u16, HarnessError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(HarnessError::io("finding a free port"))
}
