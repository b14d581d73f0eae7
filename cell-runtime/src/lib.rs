//! The Cellbus cell runtime and the `cellbus` command line: serving cells over NATS
//! request/reply, local mode, calls, module pushes and signatures, and the benchmark.

#![deny(unsafe_code)]

pub mod bench;
pub mod call;
pub mod cell;
pub mod celllog;
pub mod db;
pub mod durable;
pub mod error;
pub mod http;
pub mod metrics;
pub mod modules;
pub mod process;
// Raising an exception in a running thread (a request past its deadline) is a CPython C
// call; that one block is the module's only `unsafe`.
#[cfg(feature = "python")]
#[allow(unsafe_code)]
pub mod python;
pub mod serve;
pub mod server;
pub mod shared;
pub mod signing;
pub mod up;
// The one module allowed `unsafe`: loading compiled code from the cache.
#[allow(unsafe_code)]
pub mod wasm;

use std::path::PathBuf;
use std::sync::Arc;

use cellbus_control::NatsArgs;

use crate::db::secrets::KubernetesSecrets;
use crate::db::{Databases, SecretSource};
use crate::metrics::Metrics;
use crate::server::{Identity, PoolServer};
use crate::shared::Shared;
use crate::wasm::{EngineSettings, Executor, ExecutorError};

/// The default largest request body: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// Messages that may wait in one subscription of the data connection. Each service's
/// subscription is read at once and refusals are answered inline, so a backlog builds
/// only while the runtime is starved of CPU; this bounds what it then holds.
pub const PENDING_PER_SUBSCRIPTION: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error(transparent)]
    Nats(#[from] cellbus_control::Error),
    #[error("setting up the https client")]
    Http(#[source] reqwest::Error),
    #[error("listening on {address}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Engine and request limits of a runtime process.
#[derive(Clone, Debug, clap::Args)]
pub struct EngineArgs {
    /// Directory of the compiled code cache.
    #[arg(long, env = "CELLBUS_CACHE_DIR", default_value_os_t = default_cache_dir())]
    pub cache_dir: PathBuf,
    /// Most linear memory one cell instance may have, in bytes.
    #[arg(long, env = "CELLBUS_MAX_MEMORY", default_value_t = 512 << 20)]
    pub max_memory: usize,
    /// Cell instances that may run at once in this process.
    #[arg(long, env = "CELLBUS_MAX_INSTANCES", default_value_t = 1000)]
    pub max_instances: u32,
    /// Largest request body accepted, in bytes; larger ones get `resource_exhausted`.
    #[arg(long, env = "CELLBUS_MAX_PAYLOAD", default_value_t = DEFAULT_MAX_PAYLOAD)]
    pub max_payload: usize,
}

impl Default for EngineArgs {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            max_memory: 512 << 20,
            max_instances: 1000,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("cellbus/code")
}

/// One runtime process: the engine, the NATS connection and the buckets, shared by the
/// pools it serves.
#[derive(Clone)]
pub struct Node {
    pub shared: Shared,
}

impl Node {
    /// Sets up the engine and connects. `name` names the connection in NATS monitoring.
    pub async fn start(nats: &NatsArgs, engine: &EngineArgs, name: &str) -> Result<Self, Error> {
        let metrics = Arc::new(Metrics::new());
        let executor = Arc::new(Executor::new(
            &EngineSettings {
                max_memory: engine.max_memory,
                max_instances: engine.max_instances,
                cache_dir: engine.cache_dir.clone(),
            },
            metrics.clone(),
        )?);
        let client = cellbus_control::connect_bounded(nats, name, PENDING_PER_SUBSCRIPTION).await?;
        let control = cellbus_control::connect(nats, &format!("{name} control")).await?;
        let js = async_nats::jetstream::new(control.clone());
        let buckets = cellbus_control::ensure_buckets(&js).await?;
        cellbus_control::nats::durable::ensure_dead_letter_stream(&js).await?;
        let http = reqwest::Client::builder()
            .https_only(true)
            .build()
            .map_err(Error::Http)?;
        Ok(Self {
            shared: Shared {
                client,
                control,
                buckets,
                executor,
                metrics,
                http,
                databases: Arc::new(Databases::new(secrets_from_environment())),
                max_payload: engine.max_payload,
                processes: process::ProcessSettings::new(),
                report_every: cellbus_contracts::status::REPORT_EVERY,
            },
        })
    }

    /// Starts serving the pool `identity` names.
    pub fn serve_pool(&self, identity: Identity) -> PoolServer {
        PoolServer::start(self.shared.clone(), identity)
    }
}

/// In a pod, the Kubernetes API (cells' database Secrets are read with the pod's service
/// account); elsewhere, nothing until a caller sets a source (`cellbus up` does).
fn secrets_from_environment() -> Option<Arc<dyn SecretSource>> {
    match KubernetesSecrets::in_cluster() {
        Ok(found) => found.map(|source| Arc::new(source) as Arc<dyn SecretSource>),
        Err(error) => {
            let why = cellbus_contracts::error_chain(&error);
            tracing::warn!(%why, "database Secrets cannot be read; cells with a database will not load");
            None
        }
    }
}

/// Waits for Ctrl-C or SIGTERM; see [`cellbus_control::shutdown_signal`].
pub use cellbus_control::shutdown_signal;

/// Runs `stopping` (draining, once a first signal has arrived) to its end, but no longer
/// than the shutdown grace period and a margin for the bus, and not past a second Ctrl-C
/// or SIGTERM: a process whose server has gone, or whose user insists, still stops.
pub async fn stop_within_grace(stopping: impl std::future::Future<Output = ()>) {
    let limit = server::SHUTDOWN_GRACE + std::time::Duration::from_secs(10);
    tokio::select! {
        finished = tokio::time::timeout(limit, stopping) => if finished.is_err() {
            tracing::warn!(seconds = limit.as_secs(), "stopping took too long; exiting");
        },
        _ = shutdown_signal() => tracing::warn!("a second signal: exiting without draining"),
    }
}

/// Sends what the client still holds, unless the server cannot be reached for a moment.
pub async fn flush(client: &async_nats::Client) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.flush()).await;
}
