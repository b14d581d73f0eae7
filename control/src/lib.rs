//! What the operator, the runtime and `cellbus up` share beyond the contracts: the NATS
//! side (connecting with any of the supported credentials, the buckets, module storage by
//! digest, assignment writes, the `$ping` readiness check), reading manifest files, and
//! redacting the secrets of URLs before anything prints them, and module signatures. It depends on the contracts
//! and async-nats only, so neither binary compiles the other's heavy dependencies.

#![forbid(unsafe_code)]

mod connect;
pub mod database;
pub mod durable;
pub mod logs;
pub mod manifests;
pub mod metrics;
pub mod pgtls;
mod redact;
mod responders;
pub mod signature;
mod store;
mod streams;

pub use connect::{
    connect, connect_bounded, connect_once, NatsArgs, NatsCredentials, CA_FILE, CREDS_FILE,
    NKEY_FILE,
};
pub use redact::{redact_url, REDACTED};
pub use responders::{responder, Responder};
pub use store::{
    delete_assignment, digest_of, ensure_buckets, ensure_buckets_replicated, fetch_module,
    module_exists, ping, ping_until, push_module, read_assignment, write_assignment, Buckets,
};
pub use streams::{delete_stream, ensure_stream, stream_config, StreamChange};

/// Everything that can go wrong talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading NATS credentials from {path}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to NATS at {url}")]
    Connect {
        /// The URL as given, its credentials redacted.
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("opening {what}")]
    Bucket {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("storing module {digest}")]
    PushModule {
        digest: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("module {digest} is not in the object store")]
    ModuleMissing { digest: String },
    #[error("reading module {digest}")]
    FetchModule {
        digest: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("module bytes have digest {actual}, not {expected}: the object stored under that name is another module; `cellbus module push` the right file to replace it")]
    DigestMismatch { expected: String, actual: String },
    #[error("the object stored as module {digest} does not match its own checksum (cut off or tampered with); `cellbus module push` the right file to replace it")]
    ObjectCorrupt { digest: String },
    #[error("writing the assignment {key}")]
    WriteAssignment {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reading the assignment {key}")]
    ReadAssignment {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("reconciling the stream {name}")]
    Stream {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}")]
    Durable {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{subject} did not reply within {waited:?}")]
    DurableTimeout {
        subject: String,
        waited: std::time::Duration,
    },
    #[error("deleting the report {key}")]
    DeleteReport {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("pinging {service}")]
    Ping {
        service: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

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
