//! What every part of a runtime process holds: its two NATS connections, the buckets,
//! the wasm executor, metrics, the HTTP client for modules by URL, the cells' database
//! pools and the settings of process cells. A module of its own so that the pool server,
//! the durable workers and the module fetcher depend on it and not on each other.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use cellbus_control::Buckets;

use crate::db::Databases;
use crate::metrics::Metrics;
use crate::process::ProcessSettings;
use crate::wasm::Executor;

/// What a pool server shares with the rest of the process.
#[derive(Clone)]
pub struct Shared {
    /// The data connection: requests, replies, durable consumers and cells' calls.
    pub client: Client,
    /// The control connection: the buckets (assignment watch, status reports) and
    /// `$ping`. A connection of its own, so a flood of requests never delays them.
    pub control: Client,
    pub buckets: Buckets,
    pub executor: Arc<Executor>,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
    /// Connection pools of the cells with a database.
    pub databases: Arc<Databases>,
    /// Largest request body accepted.
    pub max_payload: usize,
    /// How process cells are started.
    pub processes: ProcessSettings,
    /// How often the pod's report is written again, changed or not, so the operator can
    /// tell a live pod from a gone one.
    pub report_every: Duration,
}
