//! `cellbus-operator run`: serve `/healthz` and `/metrics`, win the leader Lease, then run
//! the Cell and CellPool controllers until a signal or the loss of the Lease.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use cellbus_control::NatsCredentials;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

use crate::context::{Buses, Context};
use crate::controller::{self, error_policy};
use crate::database::Databases;
use crate::leader::{self, LeaseSettings};
use crate::metrics::Metrics;
use crate::names;
use crate::observed::{CellObject, PoolObject};
use crate::{http, Config, Error};

/// Settings of a running operator beyond what `render` shares.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: Config,

    /// How the operator itself reaches the default NATS, when not by --nats-url: an
    /// operator running outside the cluster reaches it through a port-forward while the
    /// pods use the in-cluster name.
    #[arg(long, env = "CELLBUS_OPERATOR_NATS_URL", hide_env_values = true)]
    pub operator_nats_url: Option<String>,

    #[command(flatten)]
    pub nats: NatsCredentials,

    #[command(flatten)]
    pub database: crate::database::DatabaseArgs,

    /// Address of /healthz and /metrics.
    #[arg(long, env = "CELLBUS_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,

    /// Namespace of the leader Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// This replica's name in the Lease; the pod name, else the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Runs the operator until SIGTERM or Ctrl-C, or until it loses the leader Lease (it then
/// exits with an error, and Kubernetes restarts it as a follower).
pub async fn run(args: RunArgs) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(|source| Error::Kube {
        action: "configure a client for",
        object: "the Kubernetes API".into(),
        source,
    })?;
    let metrics = Arc::new(Metrics::new());
    let address = http::serve(args.metrics_address, metrics.clone())
        .await
        .map_err(|source| Error::Listen {
            address: args.metrics_address,
            source,
        })?;
    tracing::info!(%address, "serving /healthz and /metrics");

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("cellbus-operator-{}", uuid::Uuid::new_v4()));
    let settings = LeaseSettings::new(
        &args.lease_namespace,
        &args.config.lease_name,
        identity.clone(),
    );
    let (mut leadership, election) = leader::spawn(client.clone(), settings);
    let shutdown = shutdown_signal().shared();
    tracing::info!(
        identity,
        lease = args.config.lease_name,
        "waiting for the leader lease"
    );
    tokio::select! {
        leading = leadership.wait_until_leader() => {
            if !leading {
                return Err(Error::LostLease);
            }
        }
        () = shutdown.clone() => return Ok(()),
    }
    metrics.set_leader(true);

    let lost = {
        let mut leadership = leadership.clone();
        async move { leadership.lost().await }
    };
    let controllers = controllers(client, &args, metrics.clone(), shutdown.clone());
    let outcome = tokio::select! {
        () = controllers => Ok(()),
        () = lost => Err(Error::LostLease),
    };
    metrics.set_leader(false);
    drop(leadership);
    // The election loop gives the Lease up when the last Leadership is gone.
    let _ = election.await;
    outcome
}

/// Builds and runs both controllers over every watched namespace until `shutdown`.
pub async fn controllers(
    client: Client,
    args: &RunArgs,
    metrics: Arc<Metrics>,
    shutdown: futures::future::Shared<futures::future::BoxFuture<'static, ()>>,
) {
    let config = &args.config;
    let namespaces: Vec<Option<&str>> = if config.watches_all_namespaces() {
        vec![None]
    } else {
        config
            .watch_namespaces
            .iter()
            .map(|ns| Some(ns.as_str()))
            .collect()
    };
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY
    ));

    let mut cell_controllers = Vec::new();
    let mut pool_controllers = Vec::new();
    for namespace in &namespaces {
        let cells = Controller::new(
            api::<CellObject>(&client, *namespace),
            watcher::Config::default(),
        );
        let store = cells.store();
        let same_namespace = move |pool: PoolObject| cells_of_namespace(&store, &pool);
        let store = cells.store();
        let same_service = move |cell: CellObject| cells_of_service(&store, &cell);
        let cells = cells
            // A pool's change may place, move or strand any Cell of its namespace.
            .watches(
                api::<PoolObject>(&client, *namespace),
                watcher::Config::default(),
                same_namespace,
            )
            // A Cell's change or deletion may free its service for another Cell.
            .watches(
                api::<CellObject>(&client, *namespace),
                watcher::Config::default(),
                same_service,
            )
            .graceful_shutdown_on(shutdown.clone());
        let pools = Controller::new(
            api::<PoolObject>(&client, *namespace),
            watcher::Config::default(),
        )
        .owns(api::<Deployment>(&client, *namespace), owned.clone())
        .graceful_shutdown_on(shutdown.clone());
        cell_controllers.push(cells);
        pool_controllers.push(pools);
    }

    let cell_stores: Vec<Store<CellObject>> =
        cell_controllers.iter().map(Controller::store).collect();
    let pool_stores: Vec<Store<PoolObject>> =
        pool_controllers.iter().map(Controller::store).collect();
    let mut routes = HashMap::new();
    if let Some(url) = &args.operator_nats_url {
        routes.insert(config.nats_url.clone(), url.clone());
    }
    let context = Arc::new(
        Context::new(
            client.clone(),
            config.clone(),
            Buses::new(args.nats.clone(), routes).with_replicas(args.config.replicas),
            cell_stores,
            pool_stores,
            metrics,
        )
        .with_databases(Databases::new(args.database.clone())),
    );

    let mut runs = Vec::new();
    for cells in cell_controllers {
        runs.push(
            cells
                .run(controller::cell::reconcile, error_policy, context.clone())
                .for_each(|_| async {})
                .boxed(),
        );
    }
    for pools in pool_controllers {
        runs.push(
            pools
                .run(controller::pool::reconcile, error_policy, context.clone())
                .for_each(|_| async {})
                .boxed(),
        );
    }
    tracing::info!(namespaces = ?namespaces, "controllers running");
    futures::future::join_all(runs).await;
    tracing::info!("controllers stopped");
}

/// An API of `K` in `namespace`, or in all namespaces.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Every Cell the cache holds in `pool`'s namespace.
fn cells_of_namespace(cells: &Store<CellObject>, pool: &PoolObject) -> Vec<ObjectRef<CellObject>> {
    let namespace = pool.metadata.namespace.as_deref();
    cells
        .state()
        .iter()
        .filter(|cell| cell.metadata.namespace.as_deref() == namespace)
        .map(|cell| ObjectRef::from_obj(cell.as_ref()))
        .collect()
}

/// The other Cells the cache holds that name the same service as `cell`.
fn cells_of_service(cells: &Store<CellObject>, cell: &CellObject) -> Vec<ObjectRef<CellObject>> {
    let Some(wanted) = cell.spec_field("/service") else {
        return Vec::new();
    };
    cells
        .state()
        .iter()
        .filter(|other| other.metadata.uid != cell.metadata.uid)
        .filter(|other| other.spec_field("/service").as_ref() == Some(&wanted))
        .map(|other| ObjectRef::from_obj(other.as_ref()))
        .collect()
}

/// Resolves on SIGTERM or Ctrl-C.
fn shutdown_signal() -> futures::future::BoxFuture<'static, ()> {
    async {
        cellbus_control::shutdown_signal().await;
        tracing::info!("shutting down");
    }
    .boxed()
}
