//! `/healthz` and `/metrics` of the operator on one port: what the kubelet's liveness
//! probe and Prometheus scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Path of the liveness endpoint.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Path of the Prometheus endpoint.
pub const METRICS_PATH: &str = "/metrics";

/// The routes, for [`serve`] and for tests that drive the router directly.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(HEALTHZ_PATH, get(|| async { "ok\n" }))
        .route(METRICS_PATH, get(render_metrics))
        .with_state(metrics)
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    // The exposition format's own content type, so a scraper never has to guess.
    ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], metrics.render())
}

/// Serves the endpoints on `address` until the process ends; returns the bound address,
/// which tells the caller the port when `address` asked for any (`:0`).
pub async fn serve(address: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(metrics)).await {
            tracing::error!(%error, "the health and metrics server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// Sends `GET path` over a fresh connection and returns the status code and body.
    async fn get(address: SocketAddr, path: &str) -> (u16, String) {
        let exchange = async {
            let mut stream = TcpStream::connect(address).await.expect("connect");
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("send");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("receive");
            response
        };
        let response = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the server answers within 10 s");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in {response:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {head:?}"));
        (status, body.to_owned())
    }

    #[tokio::test]
    async fn healthz_answers_ok_and_metrics_shows_the_operator_metrics() {
        let metrics = Arc::new(Metrics::new());
        metrics.reconcile("cellpool").finish(Ok(()));
        let address = serve("127.0.0.1:0".parse().unwrap(), metrics)
            .await
            .expect("bind a free port");

        let (status, body) = get(address, HEALTHZ_PATH).await;
        assert_eq!(status, 200);
        assert_eq!(body, "ok\n");

        let (status, body) = get(address, METRICS_PATH).await;
        assert_eq!(status, 200);
        assert!(body.contains("cellbus_operator_reconciles_total"), "{body}");
    }

    #[tokio::test]
    async fn an_unknown_path_is_not_found() {
        let address = serve("127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::new()))
            .await
            .expect("bind a free port");

        let (status, _) = get(address, "/readyz").await;
        assert_eq!(status, 404);
    }
}
