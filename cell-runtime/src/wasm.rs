//! The WebAssembly executor: one wasmtime `Engine` per process (pooling allocator,
//! copy-on-write memory images, epoch interruption, fuel), one `Linker` holding every
//! host interface, an `InstancePre` per cell, and a fresh `Store` per request with the
//! cell's memory limit and deadline. A cell's capabilities are enforced when it loads: a
//! component importing an interface its Cell was not granted does not load.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellbus_contracts::assignment::AssignedCell;
use cellbus_contracts::quantity;
use cellbus_contracts::subject;
use cellbus_contracts::wire::{self, ErrorBody, ErrorCode};
use cellbus_control::nats::durable;
use uuid::Uuid;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig,
    Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::db::{self as database, CellDatabase};
use crate::error::RequestError;
use crate::metrics::Metrics;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../contracts/wit",
        world: "runtime",
        imports: { default: async },
        exports: { default: async },
    });
}

use bindings::cellbus::cell::{call, db, log, types};

/// How often the epoch advances; deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Engine-wide settings, fixed for the life of the process.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// The most linear memory one instance may have.
    pub max_memory: usize,
    /// Instances that may exist at once across all cells.
    pub max_instances: u32,
    /// Where compiled code is cached (in its `wasm` directory), keyed by module digest and
    /// engine settings.
    pub cache_dir: PathBuf,
}

/// Why a cell's module cannot run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("compiling the module")]
    Compile(#[source] wasmtime::Error),
    #[error("the module imports {import}, {why}")]
    Capability { import: String, why: &'static str },
    #[error("linking the module")]
    Link(#[source] wasmtime::Error),
    #[error("the module does not export `handle` of the cell world")]
    Export(#[source] wasmtime::Error),
    #[error("limits")]
    Limits(#[source] quantity::QuantityError),
    #[error(transparent)]
    Database(#[from] database::NoSecretSource),
}

/// The process-wide executor.
pub struct Executor {
    engine: Engine,
    /// Which call targets are durable verbs, as JetStream said lately.
    durable: Arc<DurableSubjects>,
    linker: Linker<Host>,
    /// The directory of compiled code; `None` when it could not be trusted.
    cache: Option<PathBuf>,
    max_memory: usize,
    cache_tag: String,
    metrics: Arc<Metrics>,
    compiles: AtomicU64,
    cache_hits: AtomicU64,
}

/// What a load did with the module's compiled code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSource {
    Compiled,
    Cache,
}

impl Executor {
    pub fn new(settings: &EngineSettings, metrics: Arc<Metrics>) -> Result<Self, ExecutorError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(settings.max_instances)
            .total_core_instances(settings.max_instances.saturating_mul(4))
            .total_memories(settings.max_instances.saturating_mul(2))
            .total_tables(settings.max_instances.saturating_mul(4))
            .total_stacks(settings.max_instances)
            .max_memory_size(settings.max_memory)
            // Guest languages with a runtime (CPython) instantiate many core modules with
            // large tables; these bounds leave room for them.
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(64)
            .table_elements(200_000)
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(16 << 20)
            // Small cells touch little memory: resetting it in place beats giving it back
            // to the kernel and faulting it in again on every request.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(64 << 10);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(true)
            .memory_init_cow(true)
            // Explicit bounds checks keep the pool's address space reservation to the
            // memory limit rather than 4 GiB per memory.
            .memory_reservation(settings.max_memory as u64)
            .memory_guard_size(64 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(ExecutorError::Engine)?;

        // Deadlines are counted in epochs: a thread advances them for as long as the
        // engine lives.
        let ticking = engine.weak();
        std::thread::Builder::new()
            .name("cellbus-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticking.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(ExecutorError::EpochThread)?;

        let mut linker = Linker::new(&engine);
        types::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)
            .map_err(ExecutorError::Linker)?;
        log::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)
            .map_err(ExecutorError::Linker)?;
        call::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)
            .map_err(ExecutorError::Linker)?;
        db::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)
            .map_err(ExecutorError::Linker)?;
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(ExecutorError::Linker)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        std::fs::create_dir_all(&settings.cache_dir).map_err(|source| ExecutorError::Cache {
            dir: settings.cache_dir.clone(),
            source,
        })?;
        let cache = code_directory(&settings.cache_dir)
            .inspect_err(|error| {
                tracing::warn!(
                    why = %cellbus_contracts::error_chain(error),
                    "compiled code will not be cached: the code cache cannot be trusted"
                );
            })
            .ok();
        Ok(Self {
            engine,
            durable: Arc::default(),
            linker,
            cache,
            max_memory: settings.max_memory,
            cache_tag: format!("{:016x}", hasher.finish()),
            metrics,
            compiles: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Modules compiled by this executor so far.
    pub fn compiles(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// Modules loaded from the code cache so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// Compiles `bytes` (already checked against `digest`), or loads the code compiled for
    /// the same digest and engine settings before.
    pub fn component(
        &self,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, CodeSource), LoadError> {
        let file = self.cache.as_ref().map(|dir| {
            dir.join(format!(
                "{}-{}.cwasm",
                digest.trim_start_matches("sha256:"),
                self.cache_tag
            ))
        });
        if let Some(file) = file.as_deref().filter(|file| file.exists()) {
            match read_artifact(file, digest, &self.cache_tag) {
                Ok(code) => {
                    // SAFETY: wasmtime requires bytes that `serialize` of a compatible
                    // engine produced. These are in memory of our own, so they cannot change
                    // after the checks: `read_artifact` took them from a file owned and
                    // writable by this user alone, in a directory only this user can write
                    // (both checked on Unix), under a header naming this module digest, this
                    // engine tag and the SHA-256 of exactly these bytes, as written below
                    // after compiling this digest. wasmtime checks its own compatibility
                    // header again; a failure there is recompiled below.
                    if let Ok(component) = unsafe { Component::deserialize(&self.engine, &code) } {
                        self.cache_hits.fetch_add(1, Ordering::Relaxed);
                        self.metrics.module_cache_hits.inc();
                        return Ok((component, CodeSource::Cache));
                    }
                }
                Err(error) => tracing::warn!(
                    file = %file.display(),
                    why = %cellbus_contracts::error_chain(&error),
                    "ignoring a compiled artifact; compiling the module again"
                ),
            }
        }
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        self.metrics.module_compiles.inc();
        self.metrics
            .compile_seconds
            .observe(started.elapsed().as_secs_f64());
        if let (Some(file), Ok(code)) = (&file, component.serialize()) {
            // A cache that cannot be written costs a compile next time, nothing more.
            let _ = write_artifact(file, digest, &self.cache_tag, &code);
        }
        Ok((component, CodeSource::Compiled))
    }

    /// Prepares a cell: checks the component's imports against the cell's capabilities
    /// and links it. `database` is the cell's connection pool when its Cell has a
    /// database, or why it cannot have one.
    pub fn prepare(
        &self,
        cell: &AssignedCell,
        component: &Component,
        database: Option<Result<Arc<CellDatabase>, database::NoSecretSource>>,
    ) -> Result<WasmCell, LoadError> {
        let imports: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        for import in &imports {
            check_capability(import, cell)?;
        }
        let imports_db = imports.iter().any(|i| interface_of(i) == DB_INTERFACE);
        let database = match database {
            Some(Ok(pool)) => Some(pool),
            Some(Err(error)) if imports_db => return Err(LoadError::Database(error)),
            Some(Err(_)) | None => None,
        };
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(LoadError::Link)?;
        let pre = bindings::RuntimePre::new(pre).map_err(LoadError::Export)?;
        let memory = match &cell.limits.memory {
            Some(text) => Some(
                quantity::memory_bytes(text)
                    .map_err(LoadError::Limits)?
                    .try_into()
                    .unwrap_or(usize::MAX),
            ),
            None => None,
        };
        Ok(WasmCell {
            pre,
            memory,
            // Rows reach the cell as one string in its memory: more could never fit.
            rows: database::Caps::with_bytes(memory.unwrap_or(self.max_memory)),
            fuel: cell.limits.fuel,
            uses_wasi: imports.iter().any(|i| i.starts_with("wasi:")),
            calls: Arc::new(cell.capabilities.call.clone()),
            database,
        })
    }

    /// Runs `handle(verb, payload)` of a cell in a fresh store.
    pub async fn invoke(
        &self,
        cell: &WasmCell,
        verb: &str,
        payload: &str,
        context: CallContext,
    ) -> Result<String, RequestError> {
        let deadline = context.deadline;
        let mut store = Store::new(
            &self.engine,
            Host {
                memory_limit: cell.memory,
                memory_exceeded: false,
                wasi: cell.uses_wasi.then(locked_down_wasi),
                table: ResourceTable::new(),
                calls: cell.calls.clone(),
                database: cell.database.clone(),
                rows: cell.rows,
                durable: self.durable.clone(),
                context,
            },
        );
        store.limiter(|host| host);
        // At every epoch tick a running guest either yields, so one busy cell cannot hold
        // an executor thread, or stops when its deadline has passed.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });
        store
            .set_fuel(cell.fuel.unwrap_or(u64::MAX))
            .map_err(RequestError::Fuel)?;

        let started = Instant::now();
        let instance = cell.pre.instantiate_async(&mut store).await;
        self.metrics
            .instantiate_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = match instance {
            Ok(instance) => instance.call_handle(&mut store, verb, payload).await,
            Err(error) => Err(error),
        };
        match outcome {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(RequestError::Answered(from_cell_error(error))),
            Err(error) => Err(self.classify(error, store.data().memory_exceeded)),
        }
    }

    /// What a trap or host failure means for the request, counting sandbox kills.
    fn classify(&self, error: wasmtime::Error, memory_exceeded: bool) -> RequestError {
        let kill = |reason: &str| {
            self.metrics
                .sandbox_kills
                .with_label_values(&[reason])
                .inc()
        };
        if memory_exceeded {
            kill("memory");
            return RequestError::MemoryExceeded;
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                kill("deadline");
                RequestError::Interrupted
            }
            Some(Trap::OutOfFuel) => {
                kill("fuel");
                RequestError::OutOfFuel
            }
            Some(Trap::AllocationTooLarge) => {
                kill("memory");
                RequestError::NoInstanceRoom
            }
            Some(trap) => {
                kill("trap");
                RequestError::Trapped(*trap)
            }
            None if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() => {
                RequestError::NoInstanceSlot(error)
            }
            None => {
                kill("error");
                RequestError::Failed(error)
            }
        }
    }
}

/// First field of a compiled artifact's header line, which goes on with the module
/// digest, the engine tag and the SHA-256 of the code after the line. It binds the code to
/// what it was compiled from, where a file name could be given to any file.
const ARTIFACT_MAGIC: &str = "cellbus-cwasm-1";

/// Writes compiled code after its header to a private temporary file and renames that
/// into place, so a reader never sees half a file.
fn write_artifact(path: &Path, digest: &str, tag: &str, code: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    writeln!(file, "{ARTIFACT_MAGIC} {digest} {tag} {}", sha256_hex(code))?;
    file.write_all(code)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The code of a compiled artifact, read whole into memory, once its file is one only this
/// user could have written and its header names `digest`, `tag` and the code's SHA-256.
fn read_artifact(path: &Path, digest: &str, tag: &str) -> Result<Vec<u8>, ArtifactError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(ArtifactError::Read)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().map_err(ArtifactError::Read)?;
        if !meta.is_file() {
            return Err(ArtifactError::NotAFile);
        }
        cache_trust(meta.uid(), meta.mode(), effective_uid())?;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(ArtifactError::Read)?;
    let line_end = bytes
        .iter()
        .take(512)
        .position(|b| *b == b'\n')
        .ok_or(ArtifactError::NoHeader)?;
    let header =
        std::str::from_utf8(&bytes[..line_end]).map_err(|_| ArtifactError::HeaderNotText)?;
    let [magic, named_digest, named_tag, hash] = header.split(' ').collect::<Vec<_>>()[..] else {
        return Err(ArtifactError::MalformedHeader(header.to_owned()));
    };
    if magic != ARTIFACT_MAGIC {
        return Err(ArtifactError::Magic(magic.to_owned()));
    }
    if named_digest != digest {
        return Err(ArtifactError::OtherModule {
            named: named_digest.to_owned(),
            expected: digest.to_owned(),
        });
    }
    if named_tag != tag {
        return Err(ArtifactError::OtherEngine {
            named: named_tag.to_owned(),
            expected: tag.to_owned(),
        });
    }
    if sha256_hex(&bytes[line_end + 1..]) != hash {
        return Err(ArtifactError::Hash);
    }
    bytes.drain(..=line_end);
    Ok(bytes)
}

/// Why a compiled artifact is not used.
#[derive(Debug, thiserror::Error)]
enum ArtifactError {
    #[error("reading it")]
    Read(#[source] std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    #[error("no header line")]
    NoHeader,
    #[error("a header that is not text")]
    HeaderNotText,
    #[error("a malformed header {0:?}")]
    MalformedHeader(String),
    #[error("header {0:?}, not {ARTIFACT_MAGIC}")]
    Magic(String),
    #[error("compiled from module {named}, not {expected}")]
    OtherModule { named: String, expected: String },
    #[error("compiled by engine {named}, not {expected}")]
    OtherEngine { named: String, expected: String },
    #[error("the code does not have the SHA-256 its header names")]
    Hash,
}

fn sha256_hex(bytes: &[u8]) -> String {
    cellbus_control::digest_of(bytes)
        .trim_start_matches("sha256:")
        .to_owned()
}

/// The directory of compiled code: `wasm` under the cache directory, created private to
/// this user, since the cache directory itself may be a volume anyone can write (a
/// Kubernetes emptyDir is). The error says why it cannot be trusted to hold only code this
/// user compiled.
fn code_directory(cache_dir: &Path) -> Result<PathBuf, CacheError> {
    let dir = cache_dir.join("wasm");
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(CacheError::Create { dir, source }),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::metadata(&dir) {
            Ok(meta) => meta,
            Err(source) => return Err(CacheError::Inspect { dir, source }),
        };
        if !meta.is_dir() {
            return Err(CacheError::NotADirectory(dir));
        }
        if let Err(source) = cache_trust(meta.uid(), meta.mode(), effective_uid()) {
            return Err(CacheError::Untrusted { dir, source });
        }
    }
    Ok(dir)
}

/// Why the directory of compiled code cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("creating {}", dir.display())]
    Create {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", dir.display())]
    Inspect {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}", dir.display())]
    Untrusted {
        dir: PathBuf,
        #[source]
        source: Untrusted,
    },
}

/// Whether a code cache directory or artifact with this owner and mode (`st_uid`,
/// `st_mode`) can hold only what the user `uid` wrote: it must be that user's and
/// writable by no group and no other user. The error says why not.
pub fn cache_trust(owner: u32, mode: u32, uid: u32) -> Result<(), Untrusted> {
    if owner != uid {
        return Err(Untrusted::Owner { owner, uid });
    }
    if mode & 0o022 != 0 {
        return Err(Untrusted::Writable {
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Why a code cache directory or artifact may hold code this runtime did not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("owned by uid {owner}, not by this runtime's uid {uid}")]
    Owner { owner: u32, uid: u32 },
    #[error("mode {mode:o} lets others write to it (it must be writable by its owner alone)")]
    Writable { mode: u32 },
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Only what a cell's Cell grants may be imported.
fn check_capability(import: &str, cell: &AssignedCell) -> Result<(), LoadError> {
    let refuse = |why: &'static str| {
        Err(LoadError::Capability {
            import: import.to_owned(),
            why,
        })
    };
    match interface_of(import) {
        "cellbus:cell/types" => Ok(()),
        "cellbus:cell/log" if cell.capabilities.log => Ok(()),
        "cellbus:cell/log" => refuse("which needs spec.capabilities.log: true"),
        "cellbus:cell/call" if !cell.capabilities.call.is_empty() => Ok(()),
        "cellbus:cell/call" => refuse("which needs subjects in spec.capabilities.call"),
        DB_INTERFACE if cell.database.is_some() => Ok(()),
        DB_INTERFACE => refuse("which needs spec.database"),
        i if i.starts_with("wasi:clocks/") && !cell.capabilities.clocks => {
            refuse("which needs spec.capabilities.clocks: true")
        }
        i if i.starts_with("wasi:random/") && !cell.capabilities.random => {
            refuse("which needs spec.capabilities.random: true")
        }
        i if i.starts_with("wasi:") => Ok(()),
        _ => refuse("which Cellbus does not provide"),
    }
}

const DB_INTERFACE: &str = "cellbus:cell/db";

/// An import's interface without its version.
fn interface_of(import: &str) -> &str {
    import.split('@').next().unwrap_or(import)
}

/// WASI for a cell: no files, no environment, no inherited stdio, and sockets that refuse
/// every address (the interfaces link so that language runtimes importing them load).
fn locked_down_wasi() -> WasiCtx {
    WasiCtx::builder().build()
}

/// A loaded wasm cell, ready to instantiate.
pub struct WasmCell {
    pre: bindings::RuntimePre<Host>,
    memory: Option<usize>,
    /// What one query may return to the cell.
    rows: database::Caps,
    fuel: Option<u64>,
    uses_wasi: bool,
    calls: Arc<Vec<String>>,
    database: Option<Arc<CellDatabase>>,
}

/// What a request's host calls need: who is asking, until when, and the bus.
#[derive(Clone)]
pub struct CallContext {
    pub service: String,
    pub verb: String,
    pub correlation_id: Uuid,
    pub deadline: Instant,
    pub client: Option<async_nats::Client>,
}

/// The state of one request's store.
pub struct Host {
    memory_limit: Option<usize>,
    memory_exceeded: bool,
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    calls: Arc<Vec<String>>,
    database: Option<Arc<CellDatabase>>,
    rows: database::Caps,
    durable: Arc<DurableSubjects>,
    context: CallContext,
}

impl wasmtime::ResourceLimiter for Host {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match self.memory_limit {
            Some(limit) if desired > limit => {
                self.memory_exceeded = true;
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(locked_down_wasi),
            table: &mut self.table,
        }
    }
}

impl types::Host for Host {}

impl log::Host for Host {
    async fn log(&mut self, level: log::Level, message: String) {
        let context = &self.context;
        let (service, verb, correlation_id) =
            (&context.service, &context.verb, context.correlation_id);
        let message = crate::celllog::escape(&message);
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "cell", service, verb, %correlation_id, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "cell", service, verb, %correlation_id, "{message}")
            }
            log::Level::Info => {
                tracing::info!(target: "cell", service, verb, %correlation_id, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "cell", service, verb, %correlation_id, "{message}")
            }
            log::Level::Error => {
                tracing::error!(target: "cell", service, verb, %correlation_id, "{message}")
            }
        }
    }
}

impl call::Host for Host {
    async fn request(
        &mut self,
        service: String,
        verb: String,
        payload: String,
    ) -> Result<String, types::CellError> {
        self.call(service, verb, payload)
            .await
            .map_err(|error| to_cell_error(&error))
    }
}

impl db::Host for Host {
    async fn query(&mut self, sql: String, params: String) -> Result<String, types::CellError> {
        self.database()?
            .query(&sql, &params, self.context.deadline, self.rows)
            .await
            .map_err(|error| to_cell_error(&error))
    }

    async fn execute(&mut self, sql: String, params: String) -> Result<u64, types::CellError> {
        self.database()?
            .execute(&sql, &params, self.context.deadline)
            .await
            .map_err(|error| to_cell_error(&error))
    }
}

impl Host {
    /// The cell's pool; a component only links `db` when its Cell has one.
    fn database(&self) -> Result<Arc<CellDatabase>, types::CellError> {
        self.database
            .clone()
            .ok_or_else(|| to_cell_error(&RequestError::NoDatabase))
    }

    /// A request to another service on behalf of the cell: only to subjects it was
    /// granted, within what is left of its own deadline, in its conversation.
    async fn call(
        &mut self,
        service: String,
        verb: String,
        payload: String,
    ) -> Result<String, RequestError> {
        let subject =
            subject::request_subject(&service, &verb).map_err(RequestError::CallTarget)?;
        if !self
            .calls
            .iter()
            .any(|pattern| subject_matches(pattern, &subject))
        {
            return Err(RequestError::CallNotGranted { subject });
        }
        let payload: serde_json::Value =
            serde_json::from_str(&payload).map_err(RequestError::CallPayload)?;
        let remaining = self
            .context
            .deadline
            .saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(RequestError::NoTimeForCall);
        }
        let Some(client) = self.context.client.clone() else {
            return Err(RequestError::NoBus);
        };
        let request = wire::Request::new(service, verb, payload)
            .with_correlation_id(self.context.correlation_id)
            .with_timeout_ms(remaining.as_millis().max(1) as u64);
        // A durable verb is served from its stream: a plain request would be answered by
        // the stream's publish acknowledgement, not by the cell.
        let js = async_nats::jetstream::new(client.clone());
        if self.durable.is_durable(&js, &subject).await {
            return match durable::durable_request(&client, &js, &request, remaining).await {
                Ok(reply) => answered(reply),
                Err(cellbus_control::Error::DurableTimeout { .. }) => {
                    Err(RequestError::CallTimeout { subject })
                }
                Err(source) => Err(RequestError::CallThroughStream { subject, source }),
            };
        }
        let body = serde_json::to_vec(&request).map_err(RequestError::EncodeCall)?;
        let reply =
            match tokio::time::timeout(remaining, client.request(subject.clone(), body.into()))
                .await
            {
                Err(_) => return Err(RequestError::CallTimeout { subject }),
                Ok(Err(source)) => return Err(RequestError::Call { subject, source }),
                Ok(Ok(message)) => message,
            };
        match serde_json::from_slice::<wire::Reply>(&reply.payload) {
            Ok(reply) => answered(reply),
            Err(source) => Err(RequestError::NotAReply { subject, source }),
        }
    }
}

/// The payload of the reply to a cell's call, or the error it carried, passed on.
fn answered(reply: wire::Reply) -> Result<String, RequestError> {
    reply
        .into_result()
        .map(|payload| payload.to_string())
        .map_err(RequestError::Answered)
}

/// How long what JetStream said of a call target holds: a verb made durable (or no
/// longer) is called the new way within this.
const DURABLE_ROUTE_TTL: Duration = Duration::from_secs(30);

/// Which call targets a stream captures (durable verbs), remembered for
/// [`DURABLE_ROUTE_TTL`] so that a call costs no JetStream round trip each time.
#[derive(Default)]
pub struct DurableSubjects {
    known: std::sync::Mutex<HashMap<String, (bool, Instant)>>,
}

impl DurableSubjects {
    async fn is_durable(&self, js: &async_nats::jetstream::Context, subject: &str) -> bool {
        if let Some((durable, at)) = self.known.lock().expect("routes lock").get(subject) {
            if at.elapsed() < DURABLE_ROUTE_TTL {
                return *durable;
            }
        }
        use async_nats::jetstream::context::GetStreamByNameErrorKind as Kind;
        let durable = match js.stream_by_subject(subject).await {
            Ok(_) => true,
            Err(error) if error.kind() == Kind::NotFound => false,
            // JetStream could not say: a plain request, and ask again next time.
            Err(_) => return false,
        };
        self.known
            .lock()
            .expect("routes lock")
            .insert(subject.to_owned(), (durable, Instant::now()));
        durable
    }
}

/// Whether `subject` matches a NATS subject pattern (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in pattern.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(token)) if literal == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

fn from_cell_error(error: types::CellError) -> ErrorBody {
    use types::ErrorCode as C;
    let code = match error.code {
        C::BadRequest => ErrorCode::BadRequest,
        C::SchemaViolation => ErrorCode::SchemaViolation,
        C::UnknownVerb => ErrorCode::UnknownVerb,
        C::Unavailable => ErrorCode::Unavailable,
        C::Timeout => ErrorCode::Timeout,
        C::ResourceExhausted => ErrorCode::ResourceExhausted,
        C::CellFailed => ErrorCode::CellFailed,
        C::Forbidden => ErrorCode::Forbidden,
        C::Internal => ErrorCode::Internal,
    };
    let details = error
        .details
        .map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)));
    ErrorBody {
        code,
        message: error.message,
        details,
        retryable: error.retryable,
    }
}

fn to_cell_error(error: &RequestError) -> types::CellError {
    use types::ErrorCode as C;
    let error = ErrorBody::from(error);
    let code = match error.code {
        ErrorCode::BadRequest => C::BadRequest,
        ErrorCode::SchemaViolation => C::SchemaViolation,
        ErrorCode::UnknownVerb => C::UnknownVerb,
        ErrorCode::Unavailable => C::Unavailable,
        ErrorCode::Timeout => C::Timeout,
        ErrorCode::ResourceExhausted => C::ResourceExhausted,
        ErrorCode::CellFailed => C::CellFailed,
        ErrorCode::Forbidden => C::Forbidden,
        ErrorCode::Internal => C::Internal,
    };
    types::CellError {
        code,
        message: error.message,
        details: error.details.map(|d| d.to_string()),
        retryable: error.retryable,
    }
}

/// Why the executor could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("setting up the WebAssembly engine")]
    Engine(#[source] wasmtime::Error),
    #[error("setting up the WebAssembly engine: starting the epoch thread")]
    EpochThread(#[source] std::io::Error),
    #[error("setting up the WebAssembly engine: linking the host interfaces")]
    Linker(#[source] wasmtime::Error),
    #[error("setting up the WebAssembly engine: creating the code cache {}", dir.display())]
    Cache {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
