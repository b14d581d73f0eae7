//! What the runtime tests share: a real nats-server, a runtime node on it, cells built
//! from WAT in the test, and requests through the bus.

#![allow(dead_code)]

pub mod database;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use async_nats::Client;
use cellbus_contracts::assignment::PoolAssignment;
use cellbus_contracts::durable::{DeadLetter, DEAD_LETTER_STREAM};
use cellbus_contracts::resources::{CellPoolSpec, CellSpec};
use cellbus_contracts::status::{CellLoadState, LoadState};
use cellbus_contracts::wire::{Reply, Request};
use cellbus_control::NatsArgs;
use cellbus_runtime::process::CellCgroups;
use cellbus_runtime::server::{Identity, PoolServer};
use cellbus_runtime::{EngineArgs, Node};
use cellbus_testkit::NatsServer;
use futures::StreamExt;
use serde_json::{json, Value};
use tempfile::TempDir;

pub const NAMESPACE: &str = "test";
pub const POOL: &str = "pool";
/// Requests larger than this are refused in tests (the default is 1 MiB).
pub const MAX_PAYLOAD: usize = 64 << 10;

/// Everything the runtime logs in this test binary, at every level, as text lines.
pub fn logs() -> &'static cellbus_testkit::CapturedLogs {
    static LOGS: std::sync::OnceLock<cellbus_testkit::CapturedLogs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = cellbus_testkit::CapturedLogs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        logs
    })
}

pub struct Bus {
    pub nats: NatsServer,
    pub node: Node,
    pub client: Client,
    pub cache: TempDir,
}

impl Bus {
    pub async fn start() -> Self {
        let nats = NatsServer::start();
        let cache = tempfile::tempdir().unwrap();
        let node = node_for(&nats, cache.path()).await;
        let client = async_nats::connect(nats.url()).await.unwrap();
        Self {
            nats,
            node,
            client,
            cache,
        }
    }

    /// Stores the cells' modules, writes the pool's assignment and serves the pool once
    /// every cell has loaded or failed.
    pub async fn deploy(&self, cells: &[TestCell]) -> PoolServer {
        self.assign(cells).await;
        let server = self.node.serve_pool(Identity {
            namespace: NAMESPACE.into(),
            pool: POOL.into(),
            pod: "pod-0".into(),
        });
        let services: Vec<&str> = cells.iter().map(|c| c.spec.service.as_str()).collect();
        settle(&server, &services).await;
        server
    }

    /// Stores the cells' modules and writes the pool's assignment.
    pub async fn assign(&self, cells: &[TestCell]) {
        let runtime = cells.first().map_or("wasm", |cell| cell.runtime);
        self.assign_in(POOL, json!({"runtime": runtime}), cells)
            .await;
    }

    /// Stores the cells' modules and writes the assignment of the pool `pool` with the
    /// spec `spec`.
    pub async fn assign_in(&self, pool: &str, spec: Value, cells: &[TestCell]) {
        for cell in cells.iter().filter(|c| !c.module.is_empty()) {
            cellbus_control::push_module(&self.node.shared.buckets.modules, &cell.module)
                .await
                .unwrap();
        }
        let spec: CellPoolSpec = serde_json::from_value(spec).unwrap();
        let assignment = PoolAssignment::new(
            NAMESPACE,
            pool,
            &spec,
            cells.iter().map(|c| (c.name.as_str(), &c.spec)),
        )
        .unwrap();
        cellbus_control::write_assignment(&self.node.shared.buckets.assignments, &assignment)
            .await
            .unwrap();
    }

    /// Serves the pool `pool` once every one of `services` has loaded or failed.
    pub async fn serve(&self, pool: &str, services: &[&str]) -> PoolServer {
        let server = self.node.serve_pool(Identity {
            namespace: NAMESPACE.into(),
            pool: pool.into(),
            pod: "pod-0".into(),
        });
        settle(&server, services).await;
        server
    }

    /// Sends raw bytes to a subject and reads the reply envelope.
    pub async fn send(&self, subject: &str, body: Vec<u8>) -> Reply {
        let reply = tokio::time::timeout(
            Duration::from_secs(20),
            self.client.request(subject.to_owned(), body.into()),
        )
        .await
        .unwrap_or_else(|_| panic!("{subject} did not answer within 20 s"))
        .unwrap_or_else(|e| panic!("requesting {subject}: {e}"));
        serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
            panic!(
                "{subject} answered {:?}, not a reply: {e}",
                String::from_utf8_lossy(&reply.payload)
            )
        })
    }

    /// Sends a request for `service.verb` from a task of its own, so the test can act
    /// while it runs; the task yields the reply.
    pub fn spawn_call(
        &self,
        service: &str,
        verb: &str,
        payload: Value,
    ) -> tokio::task::JoinHandle<Reply> {
        let client = self.client.clone();
        let subject = format!("cbs.{service}.{verb}");
        let request = serde_json::to_vec(&Request::new(service, verb, payload)).unwrap();
        tokio::spawn(async move {
            let reply = client.request(subject, request.into()).await.unwrap();
            serde_json::from_slice::<Reply>(&reply.payload).unwrap()
        })
    }

    /// Sends a request envelope for `service.verb` with `payload`.
    pub async fn call(
        &self,
        service: &str,
        verb: &str,
        payload: Value,
    ) -> Result<Value, cellbus_contracts::wire::ErrorBody> {
        let request = Request::new(service, verb, payload);
        self.send(
            &format!("cbs.{service}.{verb}"),
            serde_json::to_vec(&request).unwrap(),
        )
        .await
        .into_result()
    }
}

pub async fn node_for(nats: &NatsServer, cache: &Path) -> Node {
    let mut node = Node::start(
        &NatsArgs::url(nats.url()),
        &EngineArgs {
            cache_dir: cache.to_owned(),
            max_memory: 64 << 20,
            max_instances: 200,
            max_payload: MAX_PAYLOAD,
        },
        "test runtime",
    )
    .await
    .unwrap();
    // The tests run in their own binary; process cells are confined by `cellbus sandbox`.
    node.shared.processes.sandbox_program = env!("CARGO_BIN_EXE_cellbus").into();
    // Never the test's own cgroup: a directory laid out like a delegated one, where the
    // leaves the runtime makes and the processes that join them can be read back.
    node.shared.processes.cgroups = CellCgroups::delegated(fake_cgroup(cache));
    node
}

/// A directory under `cache` laid out like a delegated cgroup v2 directory.
pub fn fake_cgroup(cache: &Path) -> PathBuf {
    let dir = cache.join("cgroup");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
    std::fs::write(
        dir.join("cgroup.procs"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    dir
}

/// Waits until the pool reports a state for each service (loaded or failed).
pub async fn settle(server: &PoolServer, services: &[&str]) -> Vec<CellLoadState> {
    let limit = Instant::now() + Duration::from_secs(60);
    loop {
        let states = server.states();
        if server.assignment_loaded()
            && services
                .iter()
                .all(|s| states.iter().any(|state| state.service == *s))
        {
            return states;
        }
        assert!(Instant::now() < limit, "cells did not settle: {states:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `check` holds, for at most `seconds`.
pub async fn eventually(seconds: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let limit = Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(
            Instant::now() < limit,
            "{what} did not happen within {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn loaded(states: &[CellLoadState], service: &str) -> bool {
    states
        .iter()
        .any(|s| s.service == service && s.state == LoadState::Loaded)
}

/// A cell to deploy: its Cell name, spec and module bytes.
pub struct TestCell {
    pub name: String,
    pub spec: CellSpec,
    pub module: Vec<u8>,
    /// The runtime of the pool it needs.
    pub runtime: &'static str,
}

impl TestCell {
    /// A cell answering `verbs` (each `{"name": ...}` plus any verb fields) with
    /// `module`; `extra` adds spec fields (limits, capabilities, …).
    pub fn new(service: &str, verbs: Value, module: Vec<u8>, extra: Value) -> Self {
        let mut spec = json!({
            "service": service,
            "verbs": verbs,
            "module": {"digest": cellbus_control::digest_of(&module)},
        });
        if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
            spec.extend(extra);
        }
        Self {
            name: service.to_owned(),
            spec: serde_json::from_value(spec).unwrap(),
            module,
            runtime: "wasm",
        }
    }

    /// A process cell running tests/process_cells/cell.py in `mode`, answering `verbs`.
    pub fn process(service: &str, mode: &str, verbs: Value, extra: Value) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/process_cells/cell.py");
        let mut spec = json!({
            "service": service,
            "verbs": verbs,
            "module": {"command": ["python3", script, mode, marker(service)]},
        });
        if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
            spec.extend(extra);
        }
        Self {
            name: service.to_owned(),
            spec: serde_json::from_value(spec).unwrap(),
            module: Vec::new(),
            runtime: "process",
        }
    }

    /// The echo cell of examples/echo with one verb `say` and `extra` spec fields.
    pub fn echo(extra: Value) -> Self {
        Self::new("echo", json!([{"name": "say"}]), echo_wasm(), extra)
    }
}

pub fn echo_wasm() -> Vec<u8> {
    cellbus_runtime::bench::ECHO_WASM.to_vec()
}

/// A component of the `cell` world from a core module in WAT.
pub fn component(wat: &str) -> Vec<u8> {
    component_of("cell", wat)
}

/// A component of `world` from a core module in WAT.
pub fn component_of(world: &str, wat: &str) -> Vec<u8> {
    let mut module = wat::parse_str(wat).unwrap();
    let mut resolve = wit_parser::Resolve::new();
    let (package, _) = resolve
        .push_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts/wit"))
        .unwrap();
    let world = resolve.select_world(&[package], Some(world)).unwrap();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

/// A core module implementing `handle` with `body` (which leaves the result pointer on
/// the stack), plus `imports`, extra `functions` and `data` segments. Memory from 4096 up
/// belongs to the allocator; 16..48 holds results; data goes at 1024 and after.
pub fn cell_wat(imports: &str, functions: &str, body: &str, data: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $ptr i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $ptr) (local.get 3)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.add
                  (i32.div_u
                    (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
                    (i32.const 65536))
                  (i32.const 1)))
              (i32.const -1))
          (then unreachable))))
    (local.get $ptr))
  {functions}
  (func (export "handle") (param i32 i32 i32 i32) (result i32)
    {body})
  {data}
)"#
    )
}

/// `handle` replying `Ok(text)` after spinning `spin` loop iterations.
pub fn constant_cell(text: &str, spin: u32) -> Vec<u8> {
    let body = format!(
        r#"(local $i i32)
    (local.set $i (i32.const {spin}))
    (block $done
      (loop $spin
        (br_if $done (i32.eqz (local.get $i)))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br $spin)))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 1024))
    (i32.store (i32.const 24) (i32.const {len}))
    (i32.const 16)"#,
        len = text.len()
    );
    let data = format!(
        r#"(data (i32.const 1024) "{}")"#,
        text.replace('\\', "\\\\").replace('"', "\\\"")
    );
    component(&cell_wat("", "", &body, &data))
}

/// `handle` calling `service.verb` with `payload` through the `call` capability and
/// returning what the call returned.
pub fn calling_cell(service: &str, verb: &str, payload: &str) -> Vec<u8> {
    let imports = r#"(import "cellbus:cell/call@0.1.0" "request" (func $request (param i32 i32 i32 i32 i32 i32 i32)))"#;
    let body = format!(
        "(call $request (i32.const 1024) (i32.const {}) (i32.const 1100) (i32.const {}) (i32.const 1200) (i32.const {}) (i32.const 64))
    (i32.const 64)",
        service.len(),
        verb.len(),
        payload.len()
    );
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let data = format!(
        r#"(data (i32.const 1024) "{}") (data (i32.const 1100) "{}") (data (i32.const 1200) "{}")"#,
        escape(service),
        escape(verb),
        escape(payload)
    );
    component(&cell_wat(imports, "", &body, &data))
}

/// A cell of the `cell-with-db` world whose verb `sql` runs its payload, a JSON string
/// without escapes, as a query through `db` (with no parameters) and replies with the rows
/// or the error `db` returned.
pub fn sql_cell() -> Vec<u8> {
    let imports =
        r#"(import "cellbus:cell/db@0.1.0" "query" (func $query (param i32 i32 i32 i32 i32)))"#;
    // The payload is `"SQL"`: the text between the quotes is the statement.
    let body = "(call $query
      (i32.add (local.get 2) (i32.const 1)) (i32.sub (local.get 3) (i32.const 2))
      (i32.const 1024) (i32.const 2)
      (i32.const 64))
    (i32.const 64)";
    let data = r#"(data (i32.const 1024) "[]")"#;
    component_of("cell-with-db", &cell_wat(imports, "", body, data))
}

/// Every dead letter stored so far.
pub async fn dead_letters(js: &jetstream::Context) -> Vec<DeadLetter> {
    let stream = js.get_stream(DEAD_LETTER_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config::default())
        .await
        .unwrap();
    let mut letters = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        let before = letters.len();
        while let Some(message) = batch.next().await {
            letters.push(serde_json::from_slice(&message.unwrap().payload).unwrap());
        }
        if letters.len() == before {
            return letters;
        }
    }
}

/// The word that marks every process a test process cell of `service` starts, unique to
/// this test run.
pub fn marker(service: &str) -> String {
    format!("cellbus-test-{}-{service}", std::process::id())
}

/// Processes whose command line holds `marker`.
pub fn processes_marked(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == marker.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// What a runtime started as the pods' user holds to start process cells under users of
/// their own.
pub enum Grant {
    /// No capability (a wasm pool's pod).
    Nothing,
    /// CAP_SETUID and CAP_SETGID as ambient capabilities.
    Ambient,
    /// CAP_SETUID and CAP_SETGID in the bounding set, for `program`'s file capabilities
    /// to give (a process pool's pod running the process image).
    FileCapabilities,
}

/// `program`, started as a pool's pods run it: uid and gid 65532, no supplementary
/// groups, no capabilities but what `grant` says (`setpriv`); `dirs` are handed to that
/// user first. Needs root.
pub fn as_the_pods_user(program: &Path, dirs: &[&Path], grant: Grant) -> std::process::Command {
    for dir in dirs {
        let owned = std::process::Command::new("chown")
            .args(["-R", "65532:65532"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(owned.success(), "chown -R 65532:65532 {}", dir.display());
    }
    let switch = "-all,+setuid,+setgid";
    let (inheritable, ambient, bounding) = match grant {
        Grant::Nothing => ("-all", None, "-all"),
        Grant::Ambient => (switch, Some(switch), switch),
        Grant::FileCapabilities => ("-all", None, switch),
    };
    let mut command = std::process::Command::new("setpriv");
    command.args([
        "--reuid=65532",
        "--regid=65532",
        "--clear-groups",
        &format!("--inh-caps={inheritable}"),
        &format!("--bounding-set={bounding}"),
    ]);
    if let Some(ambient) = ambient {
        command.arg(format!("--ambient-caps={ambient}"));
    }
    command.arg("--").arg(program);
    command
}

/// Whether the tests run as root.
pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory of ours.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    root
}

/// Tries `attempt` until it succeeds, for up to a minute, then panics with its error: a
/// JetStream request may be refused while a cluster elects its leaders.
pub async fn until_ok<T, E: std::fmt::Display>(
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let limit = Instant::now() + Duration::from_secs(60);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) if Instant::now() < limit => {
                tracing::debug!(%error, "{what}: trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("{what}: {error}"),
        }
    }
}

/// The server leading JetStream stream `stream`, once the cluster has elected one.
pub async fn stream_leader(js: &jetstream::Context, stream: &str) -> String {
    until_ok("finding the stream's leader", async || {
        let mut stream = js.get_stream(stream).await?;
        let info = stream.info().await?;
        info.cluster
            .as_ref()
            .and_then(|cluster| cluster.leader.clone())
            .ok_or_else(|| "no leader yet".into())
            .map_err(|e: Box<dyn std::error::Error + Send + Sync>| e)
    })
    .await
}
