//! `cellbus serve`: what a pool's pods run.

use std::net::SocketAddr;

use cellbus_control::NatsArgs;
use tracing::info;

use crate::http::{self, Health};
use crate::server::Identity;
use crate::{EngineArgs, Error, Node};

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Namespace of the pool.
    #[arg(long, env = "CELLBUS_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Name of the CellPool this pod belongs to.
    #[arg(long, env = "CELLBUS_POOL")]
    pub pool: String,
    /// Name of this pod, as reported in cbs-status and $ping replies.
    #[arg(long, env = "POD_NAME")]
    pub pod: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "CELLBUS_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http: SocketAddr,
}

pub async fn run(args: ServeArgs) -> Result<(), Error> {
    let pod = args
        .pod
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()));
    let node = Node::start(&args.nats, &args.engine, &format!("cellbus {pod}")).await?;
    let pool = node.serve_pool(Identity {
        namespace: args.namespace.clone(),
        pool: args.pool.clone(),
        pod,
    });
    let health = Health {
        client: node.shared.client.clone(),
        pools: vec![pool.clone()],
        metrics: node.shared.metrics.clone(),
    };
    let mut stop = cellbus_control::StopSignals::install();
    let address = http::serve(args.http, health)
        .await
        .map_err(|source| Error::Listen {
            address: args.http,
            source,
        })?;
    info!(%address, namespace = %args.namespace, pool = %args.pool, "serving");
    stop.recv().await;
    info!("shutting down: draining subscriptions");
    crate::stop_within_grace(async {
        pool.shutdown().await;
        crate::flush(&node.shared.client).await;
    })
    .await;
    Ok(())
}
