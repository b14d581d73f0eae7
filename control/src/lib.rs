//! What the operator, the runtime and `cellbus up` share beyond the contracts, in two
//! halves that never import each other: [`nats`] (connecting with any of the supported
//! credentials, the buckets, module storage by digest, assignment writes, streams,
//! durable requests, the `$ping` readiness check) and [`postgres`] (the admin
//! connection, a least-privilege role and schema per Cell, the Secret's contents, TLS as
//! libpq does it). Beside them: reading manifest files, module signatures, redacting the
//! secrets of URLs before anything prints them, log setup, the metrics text and stop
//! signals.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod logs;
pub mod manifests;
pub mod metrics;
pub mod nats;
pub mod postgres;
mod redact;
pub mod signature;

// The NATS side is what most callers use; its names are at the crate root too.
pub use nats::{
    connect, connect_bounded, connect_once, delete_assignment, delete_stream, digest_of,
    ensure_buckets, ensure_buckets_replicated, ensure_stream, fetch_module, module_exists, ping,
    ping_until, push_module, read_assignment, responder, stream_config, write_assignment, Buckets,
    Error, NatsArgs, NatsCredentials, Responder, StreamChange, CA_FILE, CREDS_FILE, NKEY_FILE,
};
pub use redact::{redact_url, REDACTED};

/// Waits until the process is asked to stop: Ctrl-C or SIGTERM; on Windows Ctrl-C, the
/// console closing or the system shutting down (how a Windows container is stopped).
pub async fn shutdown_signal() {
    StopSignals::install().recv().await
}

/// The handlers of the signals that ask the process to stop, installed when made: a
/// signal that arrives before [`StopSignals::recv`] is awaited is kept, where without a
/// handler it would kill the process (a script that stops `cellbus up` the moment it
/// says `ready`).
pub struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(windows)]
    interrupt: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    close: tokio::signal::windows::CtrlClose,
    #[cfg(windows)]
    shutdown: tokio::signal::windows::CtrlShutdown,
}

impl StopSignals {
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                interrupt: signal(SignalKind::interrupt()).expect("installing a SIGINT handler"),
                terminate: signal(SignalKind::terminate()).expect("installing a SIGTERM handler"),
            }
        }
        #[cfg(windows)]
        {
            use tokio::signal::windows;
            StopSignals {
                interrupt: windows::ctrl_c().expect("installing a Ctrl-C handler"),
                close: windows::ctrl_close().expect("installing a close handler"),
                shutdown: windows::ctrl_shutdown().expect("installing a shutdown handler"),
            }
        }
    }

    /// Waits for the next stop signal.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(windows)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.close.recv() => {}
            _ = self.shutdown.recv() => {}
        }
    }
}
