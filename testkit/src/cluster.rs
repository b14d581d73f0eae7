//! A private three-node `nats-server -js` cluster on loopback ports: real routes, real
//! RAFT, for tests that kill a node.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{wait_for, HarnessError};

/// How long a node may take to be ready, and the cluster to elect its leaders.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Three JetStream nodes routed to each other, stopped when dropped.
pub struct NatsCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    _dir: TempDir,
}

struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts three nodes, panicking with the reason if they cannot be.
    pub fn start() -> Self {
        Self::try_start(3).unwrap_or_else(|error| panic!("starting a NATS cluster: {error}"))
    }

    pub fn try_start(size: usize) -> Result<Self, HarnessError> {
        let binary = super::nats::binary()?;
        let dir = tempfile::Builder::new()
            .prefix("cellbus-nats-cluster-")
            .tempdir()
            .map_err(HarnessError::io("creating the cluster's directory"))?;
        let mut nodes = Vec::with_capacity(size);
        for index in 0..size {
            let name = format!("node-{index}");
            nodes.push(Node {
                client_port: crate::free_port()?,
                cluster_port: crate::free_port()?,
                store: dir.path().join(&name),
                log: dir.path().join(format!("{name}.log")),
                name,
                child: None,
            });
        }
        let mut cluster = Self {
            binary,
            nodes,
            _dir: dir,
        };
        for index in 0..size {
            cluster.spawn(index)?;
        }
        for index in 0..size {
            cluster.wait_ready(index)?;
        }
        Ok(cluster)
    }

    /// Every node's client URL, comma separated, as `NATS_URL` takes them.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|index| self.url(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `index`'s client URL.
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].client_port)
    }

    /// Node `index`'s server name (`node-0`, …), as JetStream names stream leaders.
    pub fn name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    /// Kills node `index` (SIGKILL, as a crash would).
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again on its ports and store, and waits until it is ready.
    pub fn start_again(&mut self, index: usize) -> Result<(), HarnessError> {
        self.spawn(index)?;
        self.wait_ready(index)
    }

    fn spawn(&mut self, index: usize) -> Result<(), HarnessError> {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, node)| format!("nats://127.0.0.1:{}", node.cluster_port))
            .collect();
        let node = &mut self.nodes[index];
        let _ = std::fs::remove_file(&node.log);
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &node.client_port.to_string()])
            .args(["-n", &node.name, "-js", "-sd"])
            .arg(&node.store)
            .args(["--cluster_name", "cellbus-test", "--cluster"])
            .arg(format!("nats://127.0.0.1:{}", node.cluster_port))
            .arg("--routes")
            .arg(routes.join(","))
            .arg("-l")
            .arg(&node.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(HarnessError::io(format!(
                "running {}",
                self.binary.display()
            )))?;
        node.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, index: usize) -> Result<(), HarnessError> {
        let node = &mut self.nodes[index];
        let log = node.log.clone();
        let child = node.child.as_mut().expect("a started node");
        let ready = wait_for(READY_WITHIN, || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Some(false);
            }
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Server is ready")
                .then_some(true)
        });
        if ready == Some(true) {
            return Ok(());
        }
        self.kill(index);
        Err(HarnessError::NotReady {
            server: "a nats-server cluster node",
            seconds: READY_WITHIN.as_secs(),
            log: std::fs::read_to_string(&self.nodes[index].log).unwrap_or_default(),
        })
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}
