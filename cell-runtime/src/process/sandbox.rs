//! The Linux sandbox of a process cell, applied by `cellbus sandbox -- PROGRAM ARGS…`, the
//! small supervisor the runtime starts for each process cell. The supervisor keeps the
//! runtime's user (the cell cannot signal, trace or read it) and starts the cell:
//!
//! - under a user and group of its own (`--uid`), never root, the runtime's or another
//!   cell's, with no capabilities and no-new-privileges: the runtime holds `CAP_SETUID`
//!   and `CAP_SETGID` (or is root) for this alone;
//! - seeing, through Landlock, only the read-only system paths a program needs, the files
//!   it is given (`--read`: its executable, its script, the SDK) and a home and a private
//!   tmp of its own (read-write); with no network unless its Cell grants it (no sockets
//!   but Unix stream ones, no connecting anywhere, no TCP bind or connect), and unable to
//!   signal or reach an abstract socket outside itself;
//! - with its Cell's environment only (handed over as `CELLBUS_CELL_ENV_*`, so nothing of
//!   it, `LD_PRELOAD` least of all, reaches the supervisor before the cell is confined);
//! - with resource limits (address space, CPU seconds, open files, processes of its user,
//!   no core dumps) and a seccomp filter refusing (EPERM) what a cell never needs:
//!   tracing, mounting, namespaces, io_uring, BPF, kernel modules and kexec, rebooting,
//!   keyrings, leaving its process group or session, and the like.
//!
//! Nothing of a cell outlives it or the runtime: every process of the cell's user is
//! killed when the cell exits, when the runtime stops it (SIGTERM) and when the runtime
//! dies (a parent-death signal), whatever it did to its processes (stopped, re-parented
//! or re-grouped them); and at the next start, in case the supervisor itself was killed.
//! The supervisor never waits on a process of the cell for long.
//!
//! Where the runtime's cgroup is delegated, the sandbox process first moves itself into
//! the cgroup v2 leaf the runtime made for this process (see [`super::cgroup`]), so the
//! cell and everything it starts are held by the leaf's memory, cpu and pids limits.

use std::path::PathBuf;

use cellbus_contracts::quantity;
use cellbus_contracts::resources;

use super::cgroup::LeafLimits;

/// The PATH a process cell starts with.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// CPU seconds a process may use over its life, when nothing says otherwise: a safety
/// net for a process that spins between requests (deadlines stop those that spin inside
/// one). It is restarted like any process that stops.
pub const DEFAULT_CPU_SECONDS: u64 = 3600;
/// Open files and sockets a process may hold.
pub const DEFAULT_OPEN_FILES: u64 = 1024;
/// Processes and threads, counted per user as Linux counts them (RLIMIT_NPROC).
pub const DEFAULT_PROCESSES: u64 = 1024;

/// What `cellbus sandbox` confines a process to.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct SandboxLimits {
    /// Address space of each process, in bytes (RLIMIT_AS).
    #[arg(long)]
    pub memory: Option<u64>,
    /// CPU seconds over the process's life (RLIMIT_CPU).
    #[arg(long, default_value_t = DEFAULT_CPU_SECONDS)]
    pub cpu_seconds: u64,
    /// Open files (RLIMIT_NOFILE).
    #[arg(long, default_value_t = DEFAULT_OPEN_FILES)]
    pub open_files: u64,
    /// Processes of the user (RLIMIT_NPROC; not enforced for root), and processes and
    /// threads of the cell (its cgroup's `pids.max`).
    #[arg(long, default_value_t = DEFAULT_PROCESSES)]
    pub processes: u64,
    /// CPU in thousandths of a CPU (the cgroup's `cpu.max`).
    #[arg(long)]
    pub cpu_millis: Option<u64>,
    /// The cgroup v2 leaf to run in, made by the runtime with the limits written.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

impl SandboxLimits {
    /// The limits of a cell with `limits` (its own over its pool's).
    pub fn of(limits: &resources::SandboxLimits) -> Result<Self, LimitsError> {
        let memory = limits
            .memory
            .as_deref()
            .map(quantity::memory_bytes)
            .transpose()
            .map_err(LimitsError::Memory)?;
        let cpu_millis = limits
            .cpu
            .as_deref()
            .map(quantity::cpu_millis)
            .transpose()
            .map_err(LimitsError::Cpu)?;
        Ok(Self {
            memory,
            cpu_seconds: DEFAULT_CPU_SECONDS,
            open_files: DEFAULT_OPEN_FILES,
            processes: DEFAULT_PROCESSES,
            cpu_millis,
            cgroup: None,
        })
    }

    /// What the cell's cgroup leaf holds it to.
    pub fn leaf(&self) -> LeafLimits {
        LeafLimits {
            memory: self.memory,
            cpu_millis: self.cpu_millis,
            pids: self.processes,
        }
    }

    /// The flags of `cellbus sandbox` that set these limits.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(memory) = self.memory {
            args.extend(["--memory".to_owned(), memory.to_string()]);
        }
        args.extend([
            "--cpu-seconds".to_owned(),
            self.cpu_seconds.to_string(),
            "--open-files".to_owned(),
            self.open_files.to_string(),
            "--processes".to_owned(),
            self.processes.to_string(),
        ]);
        if let Some(millis) = self.cpu_millis {
            args.extend(["--cpu-millis".to_owned(), millis.to_string()]);
        }
        if let Some(cgroup) = &self.cgroup {
            args.extend(["--cgroup".to_owned(), cgroup.display().to_string()]);
        }
        args
    }
}

/// Why a cell's limits cannot confine a process.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("limits.memory")]
    Memory(#[source] quantity::QuantityError),
    #[error("limits.cpu")]
    Cpu(#[source] quantity::QuantityError),
}

/// Prefix of the variables that carry the Cell's environment to the supervisor, which
/// hands them to the cell without it.
pub const CELL_ENV_PREFIX: &str = "CELLBUS_CELL_ENV_";

/// Who a cell runs as and what it may reach.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct Confinement {
    /// The cell's own user and group id.
    #[arg(long)]
    pub uid: u32,
    /// The directory (the runtime's, mode 1733) where the cell's directory `{uid}/`, with
    /// `home/` and `tmp/`, is made.
    #[arg(long)]
    pub cells_dir: PathBuf,
    /// A file the cell may read and run besides the system paths (repeatable).
    #[arg(long = "read")]
    pub readable: Vec<PathBuf>,
    /// The cell may open network sockets of its own.
    #[arg(long)]
    pub network: bool,
}

impl Confinement {
    /// The cell's home, its working directory.
    pub fn home(&self) -> PathBuf {
        self.cells_dir.join(self.uid.to_string()).join("home")
    }

    /// The cell's private tmp.
    pub fn tmp(&self) -> PathBuf {
        self.cells_dir.join(self.uid.to_string()).join("tmp")
    }

    /// The flags of `cellbus sandbox` that say this.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--uid".to_owned(),
            self.uid.to_string(),
            "--cells-dir".to_owned(),
            self.cells_dir.display().to_string(),
        ];
        for path in &self.readable {
            args.extend(["--read".to_owned(), path.display().to_string()]);
        }
        if self.network {
            args.push("--network".to_owned());
        }
        args
    }
}

/// Read-only system paths every cell may read and run from.
pub const SYSTEM_PATHS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc",
];
/// Devices every cell may read and write.
pub const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The syscalls a cell's process is refused, with EPERM.
pub const DENIED_SYSCALLS: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "setns",
    "unshare",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "iopl",
    "ioperm",
    "syslog",
    // io_uring opens sockets and files past the checks below.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // Leaving the process group would let a process escape the group kill.
    "setsid",
    "setpgid",
];

/// Whether this process may start cells under users of their own: it is root, or holds
/// `CAP_SETUID` and `CAP_SETGID` (a process pool's pod grants exactly these).
pub fn can_switch_users() -> bool {
    #[cfg(target_os = "linux")]
    {
        linux::permitted_capabilities()
            .is_some_and(|caps| caps & linux::SWITCH_USERS == linux::SWITCH_USERS)
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// What the kernel's Landlock holds a cell to: its ABI version (0 without Landlock).
pub fn landlock_abi() -> i32 {
    #[cfg(target_os = "linux")]
    {
        linux::landlock_abi()
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// What this kernel holds process cells to, for the pod's report and the log.
pub fn report() -> cellbus_contracts::status::SandboxReport {
    cellbus_contracts::status::SandboxReport::of(u32::try_from(landlock_abi()).unwrap_or(0))
}

/// Stops the cell the sandbox process `sandbox` runs: the sandbox kills every process of
/// the cell and exits.
#[cfg(unix)]
pub fn stop(sandbox: u32) {
    let Ok(pid) = i32::try_from(sandbox) else {
        return;
    };
    // SAFETY: kill(2) on a process we started and have not reaped; no memory is involved.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

#[cfg(target_os = "linux")]
pub use linux::run;

/// `cellbus sandbox` where there is no Linux sandbox.
#[cfg(not(target_os = "linux"))]
pub fn run(
    _limits: &SandboxLimits,
    _confinement: &Confinement,
    _command: &[String],
) -> std::process::ExitCode {
    eprintln!("cellbus sandbox: process cells run in this sandbox on Linux only");
    std::process::ExitCode::from(126)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Command, ExitCode};
    use std::time::{Duration, Instant};

    use landlock::{
        path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
        Scope, ABI,
    };
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::{
        Confinement, SandboxLimits, CELL_ENV_PREFIX, DENIED_SYSCALLS, DEVICES, SYSTEM_PATHS,
    };

    /// Why the supervisor could not start the cell confined.
    #[derive(Debug, thiserror::Error)]
    pub(super) enum SandboxError {
        #[error("no program to run")]
        NoProgram,
        #[error(
            "a cell runs under a user of its own, from {} to {}, not uid {uid}",
            super::super::CELL_UID_RANGE.start,
            super::super::CELL_UID_RANGE.end - 1
        )]
        NotACellUser { uid: u32 },
        #[error("reading this process's capabilities")]
        ReadCapabilities,
        #[error("raising CAP_SETUID and CAP_SETGID")]
        RaiseCapabilities(#[source] std::io::Error),
        #[error("starting a cell under its own user needs root or CAP_SETUID and CAP_SETGID")]
        CannotSwitchUsers,
        #[error("joining the cgroup {}", leaf.display())]
        JoinCgroup {
            leaf: std::path::PathBuf,
            #[source]
            source: std::io::Error,
        },
        #[error("the runtime is gone")]
        RuntimeGone,
        #[error("starting {program}")]
        Start {
            program: String,
            #[source]
            source: std::io::Error,
        },
        #[error("seccomp on {arch}")]
        SeccompArch {
            arch: &'static str,
            #[source]
            source: seccompiler::BackendError,
        },
        #[error("building the seccomp filter")]
        Seccomp(#[source] seccompiler::BackendError),
        #[error("no syscall number for {0}")]
        UnknownSyscall(&'static str),
    }

    const CAP_SETGID: u64 = 1 << 6;
    const CAP_SETUID: u64 = 1 << 7;
    pub(super) const SWITCH_USERS: u64 = CAP_SETUID | CAP_SETGID;
    /// The newest Landlock ABI this sandbox asks for; older kernels enforce what they can.
    const LANDLOCK: ABI = ABI::V6;
    /// How long the supervisor waits for the cell's processes to be reaped once killed.
    const REAP_WAIT: Duration = Duration::from_secs(2);

    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

    fn capabilities() -> Option<[CapData; 2]> {
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: capget(2) with a v3 header and room for the two words v3 returns.
        let done = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
        (done == 0).then_some(data)
    }

    fn set_capabilities(data: &[CapData; 2]) -> std::io::Result<()> {
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        // SAFETY: capset(2) on this thread with a v3 header and its two data words.
        match unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// This process's permitted capabilities as one mask.
    pub(super) fn permitted_capabilities() -> Option<u64> {
        let data = capabilities()?;
        Some(u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32))
    }

    pub(super) fn landlock_abi() -> i32 {
        // SAFETY: landlock_create_ruleset(2) with the version flag reads no memory.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0usize,
                1u32, // LANDLOCK_CREATE_RULESET_VERSION
            )
        };
        i32::try_from(abi.max(0)).unwrap_or(0)
    }

    /// Runs `command` confined as the module comment says and exits as it exits. Must be
    /// called before any thread is started: it blocks signals for the whole process.
    pub fn run(limits: &SandboxLimits, confinement: &Confinement, command: &[String]) -> ExitCode {
        match supervise(limits, confinement, command) {
            Ok(code) => code,
            Err(error) => {
                eprintln!(
                    "cellbus sandbox: {}",
                    cellbus_contracts::error_chain(&error)
                );
                ExitCode::from(126)
            }
        }
    }

    fn supervise(
        limits: &SandboxLimits,
        confinement: &Confinement,
        command: &[String],
    ) -> Result<ExitCode, SandboxError> {
        let (program, args) = command.split_first().ok_or(SandboxError::NoProgram)?;
        let uid = confinement.uid;
        // SAFETY: geteuid(2) cannot fail.
        let own = unsafe { libc::geteuid() };
        if uid == own || !super::super::CELL_UID_RANGE.contains(&uid) {
            return Err(SandboxError::NotACellUser { uid });
        }
        // The file capabilities of the runtime's binary land in the permitted set only.
        let mut caps = capabilities().ok_or(SandboxError::ReadCapabilities)?;
        for word in &mut caps {
            word.effective = word.permitted;
        }
        set_capabilities(&caps).map_err(SandboxError::RaiseCapabilities)?;
        if own != 0 && permitted_capabilities().unwrap_or(0) & SWITCH_USERS != SWITCH_USERS {
            return Err(SandboxError::CannotSwitchUsers);
        }
        if let Some(leaf) = &limits.cgroup {
            // Before the cell exists, so it and all it starts are born inside the leaf.
            std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()).map_err(
                |source| SandboxError::JoinCgroup {
                    leaf: leaf.clone(),
                    source,
                },
            )?;
        }
        let filters = seccomp_filters(confinement.network)?;
        let signals = watched_signals();
        // SAFETY: plain libc calls on this single-threaded process.
        unsafe {
            // The runtime's death reaches us as SIGTERM, handled below like a stop.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            if libc::getppid() == 1 {
                return Err(SandboxError::RuntimeGone);
            }
            // Orphans of the cell become our children, to be reaped.
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
            // Taken with sigwait below rather than by handlers.
            libc::sigprocmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut());
        }
        // What a killed supervisor may have left of this cell.
        kill_user(uid);

        let limits = limits.clone();
        let confinement = confinement.clone();
        let mut child = Command::new(program);
        child
            .args(args)
            .env_clear()
            .envs(cell_environment())
            .env("HOME", confinement.home())
            .env("TMPDIR", confinement.tmp());
        // SAFETY: runs in the forked child of this single-threaded process, before exec.
        unsafe {
            child.pre_exec(move || confine(&limits, &confinement, &filters));
        }
        let child = child.spawn().map_err(|source| SandboxError::Start {
            program: program.clone(),
            source,
        })?;
        // The cell leads its own group (set in `confine`); this is its id.
        let group = child.id() as libc::pid_t;
        // Only the cell holds the runtime's pipes now, so the runtime sees the cell
        // closing them.
        release_standard_streams();

        loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: sigwait on a set we blocked; `signal` outlives the call.
            unsafe { libc::sigwait(&signals, &mut signal) };
            if signal != libc::SIGCHLD {
                // SIGTERM (the runtime stops the cell, or died), SIGINT, SIGHUP.
                // SAFETY: signals the cell's process group.
                unsafe { libc::kill(-group, libc::SIGKILL) };
                kill_user(uid);
                continue;
            }
            if let Some(code) = reap(group) {
                // Whatever the cell left behind goes with it, wherever it went.
                kill_user(uid);
                reap_for(REAP_WAIT);
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)));
            }
        }
    }

    /// The Cell's environment, from the variables the runtime handed over for it.
    fn cell_environment() -> Vec<(OsString, OsString)> {
        std::env::vars_os()
            .filter_map(|(name, value)| {
                let name = name
                    .as_bytes()
                    .strip_prefix(CELL_ENV_PREFIX.as_bytes())
                    .map(|n| std::ffi::OsStr::from_bytes(n).to_owned())?;
                Some((name, value))
            })
            .collect()
    }

    /// Reaps what ended; the cell's exit code (as a shell reports it) once the cell ended.
    fn reap(group: libc::pid_t) -> Option<i32> {
        let mut exit = None;
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid with a valid status pointer.
            let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if reaped <= 0 {
                return exit;
            }
            if reaped == group {
                exit = Some(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
        }
    }

    /// Reaps children until there are none, for at most `wait`: a process that escaped
    /// the kill (it cannot: it would need another user) does not hold the supervisor.
    fn reap_for(wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            // SAFETY: waitpid without a status pointer.
            let reaped = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
            if reaped < 0 || Instant::now() >= until {
                return;
            }
            if reaped == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Kills every process of user `uid`, the cell's alone: a child takes that user and
    /// signals all it may, until nothing is left.
    fn kill_user(uid: u32) {
        // SAFETY: fork(2) in this single-threaded process; the child only makes system
        // calls and exits without unwinding.
        unsafe {
            match libc::fork() {
                0 => {
                    let killed = libc::setresgid(uid, uid, uid) == 0
                        && libc::setresuid(uid, uid, uid) == 0
                        && set_capabilities(&[CapData::default(); 2]).is_ok();
                    if killed {
                        // kill(-1) reaches every process this user may signal, but itself;
                        // a fork racing it is caught on the next round.
                        for _ in 0..1000 {
                            if libc::kill(-1, libc::SIGKILL) != 0 {
                                break;
                            }
                        }
                    }
                    libc::_exit(i32::from(!killed));
                }
                pid if pid > 0 => {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                _ => {}
            }
        }
    }

    /// Points stdin, stdout and stderr at /dev/null.
    fn release_standard_streams() {
        // SAFETY: open and dup2 on descriptors this process owns.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                for fd in 0..=2 {
                    libc::dup2(null, fd);
                }
                if null > 2 {
                    libc::close(null);
                }
            }
        }
    }

    fn watched_signals() -> libc::sigset_t {
        // SAFETY: a zeroed sigset_t is initialised by sigemptyset before use.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, signal);
            }
            set
        }
    }

    fn check(result: libc::c_int) -> std::io::Result<()> {
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// In the child, before exec. The supervisor is single-threaded, so allocating here
    /// is safe.
    fn confine(
        limits: &SandboxLimits,
        confinement: &Confinement,
        filters: &[BpfProgram],
    ) -> std::io::Result<()> {
        let uid = confinement.uid;
        // SAFETY: system calls on this process only.
        unsafe {
            // A group of its own, which the sandbox kills as a whole; the seccomp filter
            // below keeps the cell and its children from leaving it.
            check(libc::setpgid(0, 0))?;
            // Signals blocked in the supervisor stay blocked across exec otherwise.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &none,
                std::ptr::null_mut(),
            ))?;
            // The cell's own user: no other cell's, not the runtime's.
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(uid, uid, uid))?;
            check(libc::setresuid(uid, uid, uid))?;
            // A non-root runtime's capabilities survive the change of user; none may
            // reach the cell.
            set_capabilities(&[CapData::default(); 2])?;
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            // After the change of user, which clears it.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
            ))?;
            libc::umask(0o077);
        }
        own_directories(confinement)?;
        std::env::set_current_dir(confinement.home())?;
        set_limits(limits)?;
        landlock(confinement)?;
        for filter in filters {
            seccompiler::apply_filter(filter).map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    }

    /// Makes the cell's directory, home and tmp, as the cell's user. One already there
    /// must be the cell's own directory, not something another user put in its place.
    fn own_directories(confinement: &Confinement) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let own = confinement.cells_dir.join(confinement.uid.to_string());
        for dir in [own.clone(), confinement.home(), confinement.tmp()] {
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(error),
            }
            let meta = std::fs::symlink_metadata(&dir)?;
            if !meta.is_dir() || meta.uid() != confinement.uid {
                return Err(std::io::Error::other(format!(
                    "{} is not the cell's own directory",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    fn set_limits(limits: &SandboxLimits) -> std::io::Result<()> {
        let set = |resource, value: u64| {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit with a valid rlimit.
            check(unsafe { libc::setrlimit(resource, &limit) })
        };
        if let Some(memory) = limits.memory {
            set(libc::RLIMIT_AS, memory)?;
        }
        // The soft limit sends SIGXCPU, the hard one SIGKILL a second later.
        let cpu = libc::rlimit {
            rlim_cur: limits.cpu_seconds,
            rlim_max: limits.cpu_seconds + 1,
        };
        // SAFETY: setrlimit with a valid rlimit.
        check(unsafe { libc::setrlimit(libc::RLIMIT_CPU, &cpu) })?;
        set(libc::RLIMIT_NOFILE, limits.open_files)?;
        // Counted per user: the cell's own.
        set(libc::RLIMIT_NPROC, limits.processes)?;
        set(libc::RLIMIT_CORE, 0)
    }

    /// Holds the cell to its files, no TCP of its own unless granted, and no signals or
    /// abstract sockets past itself; sets no-new-privileges. A kernel without some of it
    /// enforces the rest (the runtime says what holds, see [`super::landlock_abi`]).
    fn landlock(confinement: &Confinement) -> std::io::Result<()> {
        let failed = |e: landlock::RulesetError| std::io::Error::other(format!("landlock: {e}"));
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(LANDLOCK))
            .map_err(failed)?
            .scope(Scope::from_all(LANDLOCK))
            .map_err(failed)?;
        if !confinement.network {
            ruleset = ruleset
                .handle_access(AccessNet::from_all(LANDLOCK))
                .map_err(failed)?;
        }
        let existing = |paths: &[&str]| -> Vec<std::path::PathBuf> {
            paths
                .iter()
                .map(Path::new)
                .filter(|p| p.exists())
                .map(Path::to_path_buf)
                .collect()
        };
        let read = AccessFs::from_read(LANDLOCK);
        ruleset
            .create()
            .map_err(failed)?
            .add_rules(path_beneath_rules(existing(SYSTEM_PATHS), read))
            .map_err(failed)?
            .add_rules(path_beneath_rules(
                existing(DEVICES),
                AccessFs::ReadFile | AccessFs::WriteFile,
            ))
            .map_err(failed)?
            .add_rules(path_beneath_rules(&confinement.readable, read))
            .map_err(failed)?
            .add_rules(path_beneath_rules(
                [confinement.home(), confinement.tmp()],
                AccessFs::from_all(LANDLOCK),
            ))
            .map_err(failed)?
            .restrict_self()
            .map_err(failed)?;
        Ok(())
    }

    /// The filters a cell runs under: the denied system calls and socket families (EPERM),
    /// and clone3 answered ENOSYS, which makes the C library fall back to clone, whose
    /// flags a filter can read.
    fn seccomp_filters(network: bool) -> Result<Vec<BpfProgram>, SandboxError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|source| {
            SandboxError::SeccompArch {
                arch: std::env::consts::ARCH,
                source,
            }
        })?;
        let rule = |conditions| SeccompRule::new(conditions).map_err(SandboxError::Seccomp);
        let arg = |index, op, value| {
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(SandboxError::Seccomp)
        };
        let mut denied = BTreeMap::new();
        for name in DENIED_SYSCALLS {
            denied.insert(syscall_number(name)?, Vec::new());
        }
        // New namespaces of any kind.
        let namespaces = [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWCGROUP,
        ];
        let clone_rules = namespaces
            .iter()
            .map(|flag| {
                let flag = *flag as u64;
                rule(vec![arg(0, SeccompCmpOp::MaskedEq(flag), flag)?])
            })
            .collect::<Result<Vec<_>, _>>()?;
        denied.insert(libc::SYS_clone, clone_rules);
        if !network {
            // Unix stream sockets only (no IP, packet, netlink or other family, and no
            // datagrams, which reach a socket by address without connecting), and no
            // connecting: a cell talks to no one but its runtime and its own processes
            // (socketpair), not to a Unix socket of the machine's, which Landlock does
            // not hold it from.
            let datagram = libc::SOCK_DGRAM as u64;
            denied.insert(
                libc::SYS_socket,
                vec![
                    rule(vec![arg(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?])?,
                    rule(vec![arg(1, SeccompCmpOp::MaskedEq(0xf), datagram)?])?,
                ],
            );
            denied.insert(libc::SYS_connect, Vec::new());
        }
        let denied = SeccompFilter::new(
            denied,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(SandboxError::Seccomp)?;
        let clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(SandboxError::Seccomp)?;
        [denied, clone3]
            .into_iter()
            .map(|filter| BpfProgram::try_from(filter).map_err(SandboxError::Seccomp))
            .collect()
    }

    fn syscall_number(name: &'static str) -> Result<i64, SandboxError> {
        let number = match name {
            "ptrace" => libc::SYS_ptrace,
            "process_vm_readv" => libc::SYS_process_vm_readv,
            "process_vm_writev" => libc::SYS_process_vm_writev,
            "mount" => libc::SYS_mount,
            "umount2" => libc::SYS_umount2,
            "pivot_root" => libc::SYS_pivot_root,
            "chroot" => libc::SYS_chroot,
            "setns" => libc::SYS_setns,
            "unshare" => libc::SYS_unshare,
            "bpf" => libc::SYS_bpf,
            "perf_event_open" => libc::SYS_perf_event_open,
            "kexec_load" => libc::SYS_kexec_load,
            "kexec_file_load" => libc::SYS_kexec_file_load,
            "init_module" => libc::SYS_init_module,
            "finit_module" => libc::SYS_finit_module,
            "delete_module" => libc::SYS_delete_module,
            "reboot" => libc::SYS_reboot,
            "swapon" => libc::SYS_swapon,
            "swapoff" => libc::SYS_swapoff,
            "acct" => libc::SYS_acct,
            "quotactl" => libc::SYS_quotactl,
            "keyctl" => libc::SYS_keyctl,
            "add_key" => libc::SYS_add_key,
            "request_key" => libc::SYS_request_key,
            "userfaultfd" => libc::SYS_userfaultfd,
            "open_by_handle_at" => libc::SYS_open_by_handle_at,
            #[cfg(target_arch = "x86_64")]
            "iopl" => libc::SYS_iopl,
            #[cfg(target_arch = "x86_64")]
            "ioperm" => libc::SYS_ioperm,
            "syslog" => libc::SYS_syslog,
            "io_uring_setup" => libc::SYS_io_uring_setup,
            "io_uring_enter" => libc::SYS_io_uring_enter,
            "io_uring_register" => libc::SYS_io_uring_register,
            "setsid" => libc::SYS_setsid,
            "setpgid" => libc::SYS_setpgid,
            #[cfg(not(target_arch = "x86_64"))]
            "iopl" | "ioperm" => return Ok(-1),
            other => return Err(SandboxError::UnknownSyscall(other)),
        };
        Ok(number)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn every_denied_syscall_has_a_number_and_the_filters_compile() {
            for name in super::DENIED_SYSCALLS {
                super::syscall_number(name).unwrap();
            }
            for network in [false, true] {
                let filters = super::seccomp_filters(network).unwrap();
                assert_eq!(filters.len(), 2);
                assert!(filters.iter().all(|f| !f.is_empty()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_cell_and_become_flags() {
        let limits = SandboxLimits::of(&resources::SandboxLimits {
            memory: Some("64Mi".into()),
            ..resources::SandboxLimits::default()
        })
        .unwrap();
        assert_eq!(limits.memory, Some(64 << 20));
        assert_eq!(
            limits.to_args(),
            [
                "--memory",
                "67108864",
                "--cpu-seconds",
                "3600",
                "--open-files",
                "1024",
                "--processes",
                "1024"
            ]
        );
        let bad = SandboxLimits::of(&resources::SandboxLimits {
            memory: Some("lots".into()),
            ..resources::SandboxLimits::default()
        });
        let why = cellbus_contracts::error_chain(&bad.unwrap_err());
        assert!(why.starts_with("limits.memory: "), "{why}");
    }
}
