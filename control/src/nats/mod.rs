//! The NATS side: connections, the buckets (assignments, pod reports, modules), streams of
//! durable verbs and the caller's half of a durable request, `$ping`, and foreign
//! responders on a subject.

mod connect;
pub mod durable;
mod responders;
mod store;
mod streams;

pub use connect::{
    connect, connect_bounded, connect_once, NatsArgs, NatsCredentials, CA_FILE, CREDS_FILE,
    NKEY_FILE,
};
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
