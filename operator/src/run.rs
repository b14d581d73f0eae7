//! `cellbus-operator run`: serve `/healthz` and `/metrics`, win the leader Lease, then run
//! the Cell and CellPool controllers until a signal or the loss of the Lease.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use cellbus_control::NatsCredentials;
use futures::channel::mpsc::UnboundedSender;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client};
use serde::de::DeserializeOwned;

use crate::controller::context::{Buses, Context};
use crate::controller::database::Databases;
use crate::controller::{self, error_policy};
use crate::leader::{self, LeaseSettings};
use crate::metrics::Metrics;
use crate::state::index::Index;
use crate::state::names;
use crate::state::observed::{CellObject, PoolObject};
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
    pub database: crate::controller::database::DatabaseArgs,

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
///
/// One watch per kind and namespace feeds three things in order: the controller's cache,
/// the [`Index`], and the controller itself. What the index says an event may have
/// changed for other Cells (a freed service, a new pool) is sent to the Cell controller
/// of their namespace to look at again. Sharing one watch this way takes kube-runtime's
/// stream API (`unstable-runtime`; kube 5 is pinned).
pub async fn controllers(
    client: Client,
    args: &RunArgs,
    metrics: Arc<Metrics>,
    shutdown: futures::future::Shared<futures::future::BoxFuture<'static, ()>>,
) {
    let config = &args.config;
    let namespaces: Vec<Option<String>> = if config.watches_all_namespaces() {
        vec![None]
    } else {
        config.watch_namespaces.iter().cloned().map(Some).collect()
    };
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY
    ));
    let index: Arc<RwLock<Index>> = Arc::default();
    let mut look_again = Vec::new();
    let mut receivers = Vec::new();
    for namespace in &namespaces {
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        look_again.push((namespace.clone(), sender));
        receivers.push(receiver);
    }
    let feed = Feed {
        index: index.clone(),
        look_again: Arc::new(look_again),
    };

    let mut cell_controllers = Vec::new();
    let mut pool_controllers = Vec::new();
    for (namespace, again) in namespaces.iter().zip(receivers) {
        let scope = namespace.as_deref();
        let feed_cells = {
            let (feed, scope) = (feed.clone(), namespace.clone());
            move |event: &watcher::Event<CellObject>| feed.cells(scope.as_deref(), event)
        };
        let (cells, reader) = watched(api(&client, scope), feed_cells);
        cell_controllers.push(
            Controller::for_stream(cells, reader)
                .reconcile_on(again)
                .graceful_shutdown_on(shutdown.clone()),
        );
        let feed_pools = {
            let (feed, scope) = (feed.clone(), namespace.clone());
            move |event: &watcher::Event<PoolObject>| feed.pools(scope.as_deref(), event)
        };
        let (pools, reader) = watched(api(&client, scope), feed_pools);
        pool_controllers.push(
            Controller::for_stream(pools, reader)
                .owns(api::<Deployment>(&client, scope), owned.clone())
                .graceful_shutdown_on(shutdown.clone()),
        );
    }

    let mut routes = HashMap::new();
    if let Some(url) = &args.operator_nats_url {
        routes.insert(config.nats_url.clone(), url.clone());
    }
    let context = Arc::new(
        Context::new(
            client.clone(),
            config.clone(),
            Buses::new(args.nats.clone(), routes).with_replicas(args.config.replicas),
            index,
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

/// Feeds watch events into the index and sends the Cells it names to be looked at again
/// to the Cell controller of their namespace.
#[derive(Clone)]
struct Feed {
    index: Arc<RwLock<Index>>,
    look_again: Arc<Vec<(Option<String>, LookAgain)>>,
}

/// Where a Cell controller takes Cells to look at again.
type LookAgain = UnboundedSender<ObjectRef<CellObject>>;

impl Feed {
    fn cells(&self, scope: Option<&str>, event: &watcher::Event<CellObject>) {
        let again = self.index_write().cell_event(scope, event);
        self.send(again);
    }

    fn pools(&self, scope: Option<&str>, event: &watcher::Event<PoolObject>) {
        let again = self.index_write().pool_event(scope, event);
        self.send(again);
    }

    fn index_write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, keys: Vec<String>) {
        for key in keys {
            let Some((namespace, name)) = key.split_once('/') else {
                continue;
            };
            let controller = self
                .look_again
                .iter()
                .find(|(scope, _)| scope.as_deref().is_none_or(|scope| scope == namespace));
            if let Some((_, sender)) = controller {
                // Only fails once the controller has stopped.
                let _ = sender.unbounded_send(ObjectRef::new(name).within(namespace));
            }
        }
    }
}

/// One watch of `api`: each event goes to a cache, then to `feed`, and the objects it
/// touched to the controller the cache is given to.
fn watched<K>(
    api: Api<K>,
    feed: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    Store<K>,
)
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect_ok(feed)
        .applied_objects();
    (stream, reader)
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

/// Resolves on SIGTERM or Ctrl-C.
fn shutdown_signal() -> futures::future::BoxFuture<'static, ()> {
    async {
        cellbus_control::shutdown_signal().await;
        tracing::info!("shutting down");
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::observed::Watched;
    use futures::channel::mpsc::{unbounded, UnboundedReceiver};
    use serde_json::json;

    fn object<K>(kind: &str, namespace: &str, name: &str, spec: serde_json::Value) -> Watched<K> {
        serde_json::from_value(json!({
            "apiVersion": "cellbus.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": spec,
        }))
        .unwrap()
    }

    fn cell(namespace: &str, name: &str) -> CellObject {
        let digest = format!("sha256:{}", "e".repeat(64));
        object(
            "Cell",
            namespace,
            name,
            json!({"service": name, "verbs": [{"name": "get"}], "module": {"digest": digest}}),
        )
    }

    fn sent(receiver: &mut UnboundedReceiver<ObjectRef<CellObject>>) -> Vec<String> {
        let mut keys = Vec::new();
        while let Ok(object) = receiver.try_recv() {
            keys.push(format!("{}/{}", object.namespace.unwrap(), object.name));
        }
        keys
    }

    #[test]
    fn a_pool_event_sends_its_namespaces_cells_to_that_namespaces_controller_only() {
        let (apps, mut apps_again) = unbounded();
        let (ops, mut ops_again) = unbounded();
        let feed = Feed {
            index: Arc::default(),
            look_again: Arc::new(vec![(Some("apps".into()), apps), (Some("ops".into()), ops)]),
        };
        feed.cells(Some("apps"), &watcher::Event::Apply(cell("apps", "orders")));
        feed.cells(Some("ops"), &watcher::Event::Apply(cell("ops", "audit")));
        assert!(sent(&mut apps_again).is_empty());

        let pool: PoolObject = object("CellPool", "apps", "wasm", json!({"runtime": "wasm"}));
        feed.pools(Some("apps"), &watcher::Event::Apply(pool));

        assert_eq!(sent(&mut apps_again), ["apps/orders"]);
        assert!(sent(&mut ops_again).is_empty());
        assert!(feed.index.read().unwrap().pool("apps", "wasm").is_some());
    }

    #[test]
    fn one_controller_of_every_namespace_gets_any_namespaces_cells() {
        let (all, mut again) = unbounded();
        let feed = Feed {
            index: Arc::default(),
            look_again: Arc::new(vec![(None, all)]),
        };
        feed.cells(None, &watcher::Event::Apply(cell("apps", "orders")));
        let mut rival = cell("ops", "orders");
        rival.metadata.uid = Some("other".into());
        feed.cells(None, &watcher::Event::Apply(rival));
        assert_eq!(sent(&mut again), ["apps/orders"]);
    }
}
