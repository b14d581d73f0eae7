//! `/healthz`, `/readyz` and `/metrics` on one port.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::server::PoolServer;

/// What the endpoints look at.
#[derive(Clone)]
pub struct Health {
    pub client: async_nats::Client,
    pub pools: Vec<PoolServer>,
    pub metrics: Arc<Metrics>,
}

impl Health {
    /// Ready: connected to NATS and every pool's assignment applied. The reason when not.
    pub fn ready(&self) -> Result<(), NotReady> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(NotReady::Disconnected);
        }
        match self.pools.iter().find(|pool| !pool.assignment_loaded()) {
            Some(_) => Err(NotReady::AssignmentNotLoaded),
            None => Ok(()),
        }
    }
}

/// Why the runtime is not ready to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("the pool assignment has not been loaded yet")]
    AssignmentNotLoaded,
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Health>) -> (StatusCode, String) {
    match health.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn metrics(State(health): State<Health>) -> String {
    health.metrics.render()
}

/// Serves the endpoints on `address` until the process ends; returns the bound address.
pub async fn serve(address: SocketAddr, health: Health) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(health)).await {
            tracing::error!(%error, "the health and metrics server stopped");
        }
    });
    Ok(bound)
}
