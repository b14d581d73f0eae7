//! Process cells: a program speaking JSON lines on stdin and stdout (see [`protocol`]),
//! run inside an OS sandbox ([`sandbox`]). One process per cell per pod serves several
//! requests at once, up to the cell's in-flight limit, replies matched to requests by id.
//!
//! A process that exits, closes its stdout or writes a line that is not a reply is
//! stopped, every request it held is answered `cell_failed`, and it is started again
//! after a backoff that doubles from 100 ms to 30 s (reset once it has run for 30 s);
//! requests arriving in the meantime wait for it within their deadline. A request that
//! outlives its deadline is answered `timeout` and the process is killed: a process that
//! ignores a request may be stuck on it, and nothing else can stop it. Stopping always
//! takes the cell's whole process group, so its children go with it.

pub mod cgroup;
pub mod protocol;
// The OS sandbox is system calls (fork/exec hooks, rlimits, prctl, signals): the one place
// the runtime uses `unsafe`, each block with its reason.
#[allow(unsafe_code)]
pub mod sandbox;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cell::Output;
use bytes::BytesMut;
use cellbus_contracts::assignment::AssignedCell;
use cellbus_contracts::resources::{steers_the_loader, Network};
use cellbus_contracts::wire::RawRequest;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::RequestError;
use crate::metrics::Metrics;
pub use cgroup::CellCgroups;
use protocol::{parse_reply, request_line};
pub use sandbox::SandboxLimits;

/// The first restart waits this long; each further one twice as long.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before it stopped starts over from the first backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long a process that closed its stdout has to exit before it is stopped.
const EXIT_GRACE: Duration = Duration::from_millis(200);
/// Longest stderr line logged as one; a longer one is logged in pieces.
const MAX_LOG_LINE: usize = 4096;

/// The first uid (and gid) handed to process cells. Far from the ids of people
/// (1000–60000), systemd's dynamic users and the ranges container engines give out (from
/// 100000 and 524288 up to 0x6fffffff).
pub const FIRST_CELL_UID: u32 = 0x7000_0000;
/// Uids of one runtime: its cells' users, one per Cell.
pub const CELL_UIDS: u32 = 4096;
/// Blocks of [`CELL_UIDS`] runtimes on one machine choose from.
pub const UID_BLOCKS: u32 = 16_384;
/// Every uid a process cell may run as: `cellbus sandbox` refuses any other, so a copy of
/// `cellbus` holding CAP_SETUID cannot be made to run a program as a person or a system
/// user.
pub const CELL_UID_RANGE: std::ops::Range<u32> =
    FIRST_CELL_UID..FIRST_CELL_UID + CELL_UIDS * UID_BLOCKS;

/// How this runtime starts process cells.
#[derive(Clone, Debug)]
pub struct ProcessSettings {
    /// The program whose `sandbox` command confines each process: `cellbus` itself on
    /// Linux, `cellbus-sandbox.exe` (the Job Object sandbox) beside it on Windows.
    pub sandbox_program: PathBuf,
    /// The cgroup leaves processes run in, where the runtime's cgroup is delegated.
    pub cgroups: CellCgroups,
    users: Arc<CellUsers>,
    files: Arc<OnceLock<Result<CellFiles, Arc<std::io::Error>>>>,
}

/// Why a process cell cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("spec.module.command is empty: it needs at least the program")]
    EmptyCommand,
    #[error("spec.env: `{name}` steers the dynamic loader; a cell may not set it")]
    LoaderVariable { name: String },
    #[error(transparent)]
    Limits(#[from] sandbox::LimitsError),
    #[error(
        "process cells run under users of their own: start the runtime as root or with \
         CAP_SETUID and CAP_SETGID (a process pool's pods have them)"
    )]
    CannotSwitchUsers,
    #[error("making the process cells' files")]
    Files(#[source] Arc<std::io::Error>),
    #[error(
        "every block of uids for process cells is held by another runtime (lock files \
         cellbus-cell-users-*.lock in {})",
        dir.display()
    )]
    UidsTaken { dir: PathBuf },
    #[error(
        "this runtime has run {CELL_UIDS} process cells, each under a user of its own, and \
         has no user left"
    )]
    NoUserLeft,
}

/// The uid each process cell of this runtime runs as, one per Cell, kept for the
/// runtime's life (a replaced Cell keeps its user, and so its home). Runtimes sharing a
/// machine (two `cellbus up`, or tests) each hold a block of uids of their own, claimed
/// with a lock on a file in the temporary directory that the kernel lets go when the
/// runtime dies; a pod's runtime has its own /tmp and takes the first block.
#[derive(Debug, Default)]
struct CellUsers {
    /// The first uid of the block and the lock holding it; `None` when every block is taken.
    block: OnceLock<Option<(u32, std::fs::File)>>,
    assigned: Mutex<HashMap<String, CellUser>>,
}

/// A cell's user, and the turn its processes take: the sandbox of one ends by killing
/// every process of the user, so the next starts only once it has exited.
#[derive(Clone, Debug)]
struct CellUser {
    uid: u32,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl CellUsers {
    fn of(&self, cell: &str) -> Result<CellUser, ProcessError> {
        let (first, _lock) = self
            .block
            .get_or_init(claim_uid_block)
            .as_ref()
            .ok_or_else(|| ProcessError::UidsTaken {
                dir: std::env::temp_dir(),
            })?;
        let mut assigned = self.assigned.lock().expect("users lock");
        if let Some(user) = assigned.get(cell) {
            return Ok(user.clone());
        }
        let next = u32::try_from(assigned.len()).unwrap_or(u32::MAX);
        if next >= CELL_UIDS {
            return Err(ProcessError::NoUserLeft);
        }
        let user = CellUser {
            uid: first + next,
            turn: Arc::default(),
        };
        assigned.insert(cell.to_owned(), user.clone());
        Ok(user)
    }
}

/// The first uid of a block no other runtime of this machine holds, and the lock that
/// holds it.
fn claim_uid_block() -> Option<(u32, std::fs::File)> {
    let dir = std::env::temp_dir();
    for block in 0..UID_BLOCKS {
        let path = dir.join(format!("cellbus-cell-users-{block}.lock"));
        // Another user's lock file opens read-only, which is enough to lock it.
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .or_else(|_| std::fs::File::open(&path));
        let Ok(file) = file else { continue };
        if file.try_lock().is_ok() {
            return Some((FIRST_CELL_UID + block * CELL_UIDS, file));
        }
    }
    None
}

/// The files process cells run or read, set up when the runtime's first process cell
/// arrives (a wasm pool's runtime never writes them), in a directory of the runtime's
/// own that cells may enter but not list (0711), removed when the runtime exits:
/// `bin/` (executables fetched by digest, the runtime's, read-only), `sdk/python/` and
/// `cells/` (1733: each cell makes its own directory there, as its own user).
#[derive(Debug)]
pub struct CellFiles {
    /// Where executables fetched by digest are stored to be run.
    pub executables: PathBuf,
    /// Where the runtime's copy of the Python SDK is, put on every process's PYTHONPATH.
    pub python_sdk: Option<PathBuf>,
    /// Where each cell has its directory.
    pub cells: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProcessSettings {
    /// Settings for a runtime confining processes with the running `cellbus`.
    pub fn new() -> Self {
        Self {
            sandbox_program: sandbox_program(),
            cgroups: CellCgroups::detect(),
            users: Arc::default(),
            files: Arc::default(),
        }
    }

    /// The cells' files, set up on first use.
    pub fn files(&self) -> Result<&CellFiles, ProcessError> {
        self.files
            .get_or_init(|| CellFiles::set_up().map_err(Arc::new))
            .as_ref()
            .map_err(|error| ProcessError::Files(error.clone()))
    }
}

impl ProcessSettings {
    /// Who the cell `spec` runs as and what it may reach: a user of its own, its files
    /// (the executable, absolute paths of files its command names, the Python SDK), and
    /// the network if its Cell grants it.
    fn confinement(
        &self,
        spec: &AssignedCell,
        command: &[String],
        executable: Option<&Executable>,
        metrics: &Metrics,
    ) -> Result<(sandbox::Confinement, Arc<tokio::sync::Mutex<()>>), ProcessError> {
        self.say_how_cells_are_confined(metrics);
        if cfg!(target_os = "linux") && !sandbox::can_switch_users() {
            return Err(ProcessError::CannotSwitchUsers);
        }
        let files = self.files()?;
        let mut readable: Vec<PathBuf> = executable.map(|e| e.path.clone()).into_iter().collect();
        readable.extend(
            command
                .iter()
                .map(PathBuf::from)
                .filter(|path| path.is_absolute() && path.is_file()),
        );
        readable.extend(files.python_sdk.clone());
        let user = self.users.of(&spec.name)?;
        let confinement = sandbox::Confinement {
            uid: user.uid,
            cells_dir: files.cells.clone(),
            readable,
            network: Network::granted(spec.capabilities.network.as_ref()),
        };
        Ok((confinement, user.turn))
    }

    /// Says once, in the log and `metrics`, what holds process cells on this kernel.
    fn say_how_cells_are_confined(&self, metrics: &Metrics) {
        static SAID: std::sync::Once = std::sync::Once::new();
        if !cfg!(target_os = "linux") {
            return;
        }
        SAID.call_once(|| {
            let report = sandbox::report();
            metrics
                .process_landlock_abi
                .set(i64::from(report.landlock_abi));
            if report.lacking.is_empty() {
                info!(
                    landlock_abi = report.landlock_abi,
                    "process cells run under users of their own, held by Landlock to their \
                     files, without TCP unless granted, signals or abstract sockets past themselves"
                );
            } else {
                warn!(
                    landlock_abi = report.landlock_abi,
                    lacking = %report.lacking.join("; "),
                    "this kernel's Landlock does not hold process cells to all it should"
                );
            }
        });
    }
}

impl Default for ProcessSettings {
    fn default() -> Self {
        Self::new()
    }
}

impl CellFiles {
    fn set_up() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cellbus-cells-")
            .tempdir()?;
        set_mode(dir.path(), 0o711)?;
        let executables = dir.path().join("bin");
        std::fs::create_dir(&executables)?;
        set_mode(&executables, 0o711)?;
        let cells = dir.path().join("cells");
        std::fs::create_dir(&cells)?;
        // Anyone may make an entry, nobody may list them, and only its owner may remove
        // one; Landlock keeps a cell from making any but its own.
        set_mode(&cells, 0o1733)?;
        let python_sdk = install_python_sdk(&dir.path().join("sdk/python"))
            .inspect_err(
                |error| warn!(%error, "process cells will not find the Python SDK (cellbus_cell)"),
            )
            .ok();
        Ok(Self {
            executables,
            python_sdk,
            cells,
            _dir: dir,
        })
    }
}

/// The Python SDK for process cells (sdk/python/cellbus_cell.py), shipped inside the
/// runtime so `import cellbus_cell` works in any pool image with a python3.
pub(crate) const PYTHON_SDK: &str = include_str!("../../../sdk/python/cellbus_cell.py");

/// Writes the Python SDK into `dir` (readable by cells, which run as other users) and
/// returns `dir`.
fn install_python_sdk(dir: &std::path::Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for dir in [dir, dir.parent().unwrap_or(dir)] {
        set_mode(dir, 0o755)?;
    }
    let file = dir.join("cellbus_cell.py");
    std::fs::write(&file, PYTHON_SDK)?;
    set_mode(&file, 0o444)?;
    Ok(dir.to_owned())
}

fn set_mode(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

fn sandbox_program() -> PathBuf {
    let own = std::env::current_exe().unwrap_or_else(|_| "cellbus".into());
    if cfg!(windows) {
        own.with_file_name("cellbus-sandbox.exe")
    } else {
        own
    }
}

/// An executable fetched by digest, stored where only the runtime writes.
#[derive(Clone, Debug)]
pub struct Executable {
    pub path: PathBuf,
    pub digest: String,
}

impl Executable {
    /// Stores `bytes` (whose digest is `digest`, already checked) as a read-only
    /// executable file. Written to a temporary file and renamed, so a process never runs
    /// a half-written file; one already there is checked, and replaced if it is not these
    /// bytes.
    pub fn install(dir: &std::path::Path, digest: &str, bytes: &[u8]) -> std::io::Result<Self> {
        use std::io::Write;
        let executable = Self {
            path: dir.join(digest.replace(':', "-")),
            digest: digest.to_owned(),
        };
        if executable.verify().is_ok() {
            return Ok(executable);
        }
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        file.write_all(bytes)?;
        file.as_file().sync_all()?;
        set_mode(file.path(), 0o555)?;
        file.persist(&executable.path).map_err(|e| e.error)?;
        Ok(executable)
    }

    /// Checks the file still holds the bytes of its digest: done before every start, so
    /// nothing but those bytes ever runs under the cell's name.
    pub fn verify(&self) -> Result<(), ExecutableError> {
        let bytes = std::fs::read(&self.path).map_err(|source| ExecutableError::Read {
            path: self.path.clone(),
            source,
        })?;
        let actual = cellbus_control::digest_of(&bytes);
        if actual != self.digest {
            return Err(ExecutableError::Digest {
                path: self.path.clone(),
                actual,
                expected: self.digest.clone(),
            });
        }
        Ok(())
    }
}

/// Why a stored executable is not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecutableError {
    #[error("reading the executable {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the executable {} has digest {actual}, not {expected}; it is not run", path.display())]
    Digest {
        path: PathBuf,
        actual: String,
        expected: String,
    },
}

/// A process cell: its program, its limits, and the process serving it now.
pub struct ProcessCell {
    supervisor: Arc<Supervisor>,
}

struct Supervisor {
    service: String,
    command: Vec<String>,
    /// The executable fetched by digest the command runs, checked before every start.
    executable: Option<Executable>,
    env: Vec<(String, String)>,
    limits: SandboxLimits,
    confinement: sandbox::Confinement,
    /// Held by the sandbox process running now, until it has exited.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Longest reply line accepted; a longer one stops the process.
    max_line: usize,
    settings: ProcessSettings,
    metrics: Arc<Metrics>,
    slot: tokio::sync::Mutex<Slot>,
    closed: AtomicBool,
}

#[derive(Default)]
struct Slot {
    running: Option<Arc<Running>>,
    /// Stops in a row, each without a healthy run before it.
    failures: u32,
    next_start: Option<Instant>,
}

/// One started process.
struct Running {
    /// The sandbox process the cell runs under.
    pid: u32,
    started: Instant,
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Mutex<HashMap<Uuid, Pending>>,
    stopped: AtomicBool,
    /// Tells the task waiting for the sandbox process to end it.
    terminate: Mutex<Option<oneshot::Sender<()>>>,
}

/// A cgroup leaf removed once its process has exited, however the start went.
struct LeafGuard(Option<cgroup::Leaf>);

impl Drop for LeafGuard {
    fn drop(&mut self) {
        if let Some(leaf) = self.0.take() {
            leaf.remove();
        }
    }
}

struct Pending {
    correlation_id: Uuid,
    reply: oneshot::Sender<Result<Output, RequestError>>,
}

impl ProcessCell {
    /// A cell running `command` (a program and its arguments; `executable`, fetched by
    /// digest, is its program) whose replies may have `reply_limit` bytes; nothing starts
    /// until its first request.
    pub fn new(
        spec: &AssignedCell,
        command: Vec<String>,
        executable: Option<Executable>,
        reply_limit: usize,
        settings: &ProcessSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProcessError> {
        if command.is_empty() {
            return Err(ProcessError::EmptyCommand);
        }
        if let Some(var) = spec.env.iter().find(|var| steers_the_loader(&var.name)) {
            return Err(ProcessError::LoaderVariable {
                name: var.name.clone(),
            });
        }
        let limits = SandboxLimits::of(&spec.limits)?;
        // Decided, and said, when the runtime's first process cell arrives.
        settings.cgroups.get(&metrics);
        let (confinement, turn) =
            settings.confinement(spec, &command, executable.as_ref(), &metrics)?;
        Ok(Self {
            supervisor: Arc::new(Supervisor {
                service: spec.service.clone(),
                command,
                executable,
                env: spec
                    .env
                    .iter()
                    .map(|var| (var.name.clone(), var.value.clone()))
                    .collect(),
                limits,
                confinement,
                turn,
                // A reply line past the limit is still read whole, so its request gets
                // `resource_exhausted` by id; one longer than the limit and room for the
                // envelope is a broken process.
                max_line: reply_limit + (64 << 10),
                settings: settings.clone(),
                metrics,
                slot: tokio::sync::Mutex::new(Slot::default()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Runs `request` in the process, answering within `deadline`.
    pub async fn invoke(
        &self,
        request: &RawRequest,
        deadline: Instant,
    ) -> Result<Output, RequestError> {
        self.supervisor.invoke(request, deadline).await
    }
}

impl Drop for ProcessCell {
    /// A replaced or removed cell's process stops with it.
    fn drop(&mut self) {
        self.supervisor.closed.store(true, Ordering::Release);
        if let Ok(slot) = self.supervisor.slot.try_lock() {
            if let Some(running) = &slot.running {
                self.supervisor.stop(running, StopReason::Replaced);
            }
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Someone holds the slot for a moment (a start, which sees `closed` and stops
            // what it started, or an exit being recorded): stop what runs once it is free.
            let supervisor = self.supervisor.clone();
            runtime.spawn(async move {
                if let Some(running) = &supervisor.slot.lock().await.running {
                    supervisor.stop(running, StopReason::Replaced);
                }
            });
        }
    }
}

impl Supervisor {
    async fn invoke(
        self: &Arc<Self>,
        request: &RawRequest,
        deadline: Instant,
    ) -> Result<Output, RequestError> {
        let running = self.running(deadline).await?;
        let id = Uuid::new_v4();
        let (reply, answer) = oneshot::channel();
        running.pending.lock().expect("pending lock").insert(
            id,
            Pending {
                correlation_id: request.reply_correlation_id(),
                reply,
            },
        );
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = request_line(request, id, remaining.as_millis() as u64);
        let written = tokio::time::timeout_at(deadline.into(), async {
            let mut stdin = running.stdin.lock().await;
            stdin.write_all(&line).await?;
            stdin.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                self.stop(&running, StopReason::StdinClosed(Arc::new(error)));
            }
            Err(_) => {
                self.kill_for_deadline(&running);
            }
        }
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(RequestError::ProcessGone),
            Err(_) => {
                running.pending.lock().expect("pending lock").remove(&id);
                self.kill_for_deadline(&running);
                Err(RequestError::ProcessDeadline)
            }
        }
    }

    /// The running process, started (after the backoff, if one is due) when there is none.
    async fn running(self: &Arc<Self>, deadline: Instant) -> Result<Arc<Running>, RequestError> {
        let mut slot = self.slot.lock().await;
        if let Some(running) = &slot.running {
            if !running.stopped.load(Ordering::Acquire) {
                return Ok(running.clone());
            }
        }
        if let Some(next) = slot.next_start {
            if next > deadline {
                return Err(RequestError::RestartAfterDeadline {
                    in_ms: next.saturating_duration_since(Instant::now()).as_millis(),
                });
            }
            tokio::time::sleep_until(next.into()).await;
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(RequestError::CellReplaced);
        }
        // The previous process of this cell's user (a restart, or the Cell replaced) ends
        // by killing every process of the user: it must be gone first.
        let Ok(turn) =
            tokio::time::timeout_at(deadline.into(), self.turn.clone().lock_owned()).await
        else {
            return Err(RequestError::PreviousProcess);
        };
        match self.start(turn) {
            Ok(running) => {
                slot.running = Some(running.clone());
                slot.next_start = None;
                Ok(running)
            }
            Err(error) => {
                slot.failures += 1;
                slot.next_start = Some(Instant::now() + backoff(slot.failures));
                warn!(service = %self.service, %error, "cannot start the cell's process");
                Err(RequestError::ProcessStart(error))
            }
        }
    }

    fn start(
        self: &Arc<Self>,
        turn: tokio::sync::OwnedMutexGuard<()>,
    ) -> std::io::Result<Arc<Running>> {
        let mut limits = self.limits.clone();
        let leaf = match self.settings.cgroups.get(&self.metrics) {
            Some(cgroups) => {
                let leaf = cgroups.leaf(&self.service, &limits.leaf())?;
                limits.cgroup = Some(leaf.path().to_owned());
                Some(leaf)
            }
            None => None,
        };
        let leaf = LeafGuard(leaf);
        if let Some(executable) = &self.executable {
            executable.verify().map_err(std::io::Error::other)?;
        }
        let mut command = Command::new(&self.settings.sandbox_program);
        command
            .arg("sandbox")
            .args(limits.to_args())
            .args(self.confinement.to_args())
            .arg("--")
            .args(&self.command);
        // The runtime's environment holds its credentials; a cell sees only its own,
        // which the supervisor itself never takes as its environment.
        command.env_clear();
        let env = [
            ("PATH", sandbox::PATH.to_owned()),
            ("LANG", "C.UTF-8".to_owned()),
        ]
        .into_iter()
        .chain(self.env.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .chain(self.python_path().map(|path| ("PYTHONPATH", path)));
        for (name, value) in env {
            command.env(format!("{}{name}", sandbox::CELL_ENV_PREFIX), value);
        }
        // Windows programs, the supervisor among them, need these to load system DLLs and
        // sockets; they name system directories, nothing of the runtime's.
        #[cfg(windows)]
        for name in ["SystemRoot", "windir", "SystemDrive", "PATHEXT", "ComSpec"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let mut child = command.spawn()?;
        let pid = child.id().expect("a just-started process has a pid");
        let (terminate, terminated) = oneshot::channel();
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let running = Arc::new(Running {
            pid,
            started: Instant::now(),
            stdin: tokio::sync::Mutex::new(stdin),
            pending: Mutex::default(),
            stopped: AtomicBool::new(false),
            terminate: Mutex::new(Some(terminate)),
        });
        info!(service = %self.service, pid, command = ?self.command, "started the cell's process");

        let this = self.clone();
        let reader = running.clone();
        tokio::spawn(async move { this.read_replies(&reader, stdout).await });
        let this = self.clone();
        let logger = running.clone();
        tokio::spawn(async move { this.log_stderr(&logger, stderr).await });
        let this = self.clone();
        let reaped = running.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                Ok(()) = terminated => {
                    end_sandbox(&mut child);
                    child.wait().await
                }
            };
            drop(turn);
            this.exited(&reaped, status).await;
            // Removing may wait a moment for the leaf to empty.
            let _ = tokio::task::spawn_blocking(move || drop(leaf)).await;
        });
        if self.closed.load(Ordering::Acquire) {
            self.stop(&running, StopReason::Replaced);
        }
        Ok(running)
    }

    /// PYTHONPATH with the runtime's Python SDK after whatever the Cell's env puts there.
    fn python_path(&self) -> Option<String> {
        let sdk = self
            .settings
            .files()
            .ok()?
            .python_sdk
            .as_ref()?
            .display()
            .to_string();
        let separator = if cfg!(windows) { ';' } else { ':' };
        Some(
            match self.env.iter().find(|(name, _)| name == "PYTHONPATH") {
                Some((_, own)) if !own.is_empty() => format!("{own}{separator}{sdk}"),
                _ => sdk,
            },
        )
    }

    /// Matches reply lines to requests until the process stops writing or breaks the
    /// protocol.
    async fn read_replies(&self, running: &Arc<Running>, stdout: ChildStdout) {
        let mut lines = FramedRead::new(stdout, ReplyLines::new(self.max_line));
        loop {
            let line = match lines.next().await {
                Some(Ok(line)) => line,
                Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                    return self.stop(running, StopReason::LineTooLong { max: self.max_line })
                }
                Some(Err(LinesCodecError::Io(error)))
                    if error.kind() == std::io::ErrorKind::InvalidData =>
                {
                    return self.stop(running, StopReason::NotUtf8);
                }
                Some(Err(LinesCodecError::Io(_))) | None => {
                    // A process that is exiting closes its stdout first; give it a moment,
                    // so its requests are answered with how it exited.
                    tokio::time::sleep(EXIT_GRACE).await;
                    return self.stop(running, StopReason::ClosedStdout);
                }
            };
            match parse_reply(line.as_bytes()) {
                Ok(reply) => {
                    let pending = running
                        .pending
                        .lock()
                        .expect("pending lock")
                        .remove(&reply.id);
                    match pending {
                        Some(pending) => {
                            let outcome = reply.outcome.map_err(RequestError::Answered);
                            let _ = pending.reply.send(outcome);
                        }
                        // The request timed out already, or never was.
                        None => {
                            debug!(service = %self.service, id = %reply.id, "a reply nobody waits for")
                        }
                    }
                }
                Err(error) => return self.stop(running, StopReason::NotAReply(error)),
            }
        }
    }

    async fn log_stderr(&self, running: &Arc<Running>, stderr: tokio::process::ChildStderr) {
        let mut stderr = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut stderr)
                .take(MAX_LOG_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = crate::celllog::escape(text.trim_end_matches(['\n', '\r']));
            // The requests in flight when the line was written, which is as close as a
            // line on a shared stream gets to the request it is about.
            let correlation: Vec<Uuid> = running
                .pending
                .lock()
                .expect("pending lock")
                .values()
                .map(|p| p.correlation_id)
                .collect();
            match correlation.as_slice() {
                [one] => {
                    info!(target: "cell", service = %self.service, correlation_id = %one, "{text}")
                }
                many => info!(target: "cell", service = %self.service, in_flight = ?many, "{text}"),
            }
        }
    }

    /// The process is gone: answer what it held, count it, and set the backoff.
    async fn exited(
        &self,
        running: &Arc<Running>,
        status: std::io::Result<std::process::ExitStatus>,
    ) {
        let why = match status {
            Ok(status) => StopReason::Exited(status),
            Err(error) => StopReason::Unwaitable(Arc::new(error)),
        };
        let expected = self.closed.load(Ordering::Acquire);
        if !expected {
            warn!(service = %self.service, pid = running.pid, "{why}");
        }
        self.fail_pending(running, &why);
        running.stopped.store(true, Ordering::Release);
        let mut slot = self.slot.lock().await;
        if slot
            .running
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, running))
        {
            slot.running = None;
        }
        if running.started.elapsed() >= HEALTHY_RUN {
            slot.failures = 0;
        }
        slot.failures += 1;
        slot.next_start = Some(Instant::now() + backoff(slot.failures));
    }

    /// Stops the process for `why`: its requests are answered `cell_failed` now, and the
    /// whole process group is killed.
    fn stop(&self, running: &Arc<Running>, why: StopReason) {
        if running.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        if !self.closed.load(Ordering::Acquire) {
            warn!(service = %self.service, pid = running.pid, "stopping the cell's process: {why}");
            self.metrics
                .sandbox_kills
                .with_label_values(&["protocol"])
                .inc();
        }
        self.fail_pending(running, &why);
        if let Some(terminate) = running.terminate.lock().expect("terminate lock").take() {
            // Gone already if the process has exited.
            let _ = terminate.send(());
        }
    }

    fn kill_for_deadline(&self, running: &Arc<Running>) {
        if running.stopped.load(Ordering::Acquire) {
            return;
        }
        self.metrics
            .sandbox_kills
            .with_label_values(&["deadline"])
            .inc();
        self.stop(running, StopReason::Deadline);
    }

    fn fail_pending(&self, running: &Arc<Running>, why: &StopReason) {
        let pending: Vec<Pending> = running
            .pending
            .lock()
            .expect("pending lock")
            .drain()
            .map(|(_, pending)| pending)
            .collect();
        for pending in pending {
            let _ = pending
                .reply
                .send(Err(RequestError::ProcessStopped(why.clone())));
        }
    }
}

/// Ends a cell's sandbox process, and so the cell with everything it started: on Linux
/// SIGTERM, on which the sandbox kills the cell's process group; on Windows the sandbox
/// is killed outright, closing its Job Object, which ends every process in it.
fn end_sandbox(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        sandbox::stop(pid);
    }
    #[cfg(not(unix))]
    let _ = child.start_kill();
}

/// The wait before restart number `failures`.
fn backoff(failures: u32) -> Duration {
    cellbus_control::backoff::delay_after(FIRST_BACKOFF, MAX_BACKOFF, failures)
}

/// Why a process was stopped, or stopped by itself; every request it held fails with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StopReason {
    #[error("the process closed its stdout")]
    ClosedStdout,
    #[error("the process wrote a line longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("the process wrote a line that is not UTF-8")]
    NotUtf8,
    #[error("the process wrote {0}")]
    NotAReply(protocol::LineError),
    #[error("its stdin is closed ({0})")]
    StdinClosed(Arc<std::io::Error>),
    #[error("the process {}", describe_exit(*.0))]
    Exited(std::process::ExitStatus),
    #[error("the process could not be waited for: {0}")]
    Unwaitable(Arc<std::io::Error>),
    #[error("the cell was replaced or removed")]
    Replaced,
    #[error("a request's deadline passed while the process held it")]
    Deadline,
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    match status.code() {
        // The sandbox reports a cell killed by a signal as 128 + the signal, as shells do.
        Some(code) if code > 128 => format!("was killed by signal {}", code - 128),
        Some(code) => format!("exited with status {code}"),
        None => "exited".to_owned(),
    }
}

/// Reply lines of at most a given length. A line the end of the stream cut short is not a
/// reply: the process stopped while writing it.
struct ReplyLines(LinesCodec);

impl ReplyLines {
    fn new(max: usize) -> Self {
        Self(LinesCodec::new_with_max_length(max))
    }
}

impl Decoder for ReplyLines {
    type Item = String;
    type Error = LinesCodecError;

    fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<String>, LinesCodecError> {
        self.0.decode(buffer)
    }

    fn decode_eof(&mut self, buffer: &mut BytesMut) -> Result<Option<String>, LinesCodecError> {
        self.0.decode(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_100_ms_to_30_s() {
        let waits: Vec<u128> = (1..=12).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
