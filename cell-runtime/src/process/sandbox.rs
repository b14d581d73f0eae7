//! The Linux sandbox of a process cell, applied by `cellbus sandbox -- PROGRAM ARGS…`, the
//! small supervisor the runtime starts for each process cell:
//!
//! - the cell leads a process group of its own, which the sandbox kills as a whole when
//!   the runtime stops it (SIGTERM), when the cell exits (taking what it left behind), and
//!   when the runtime dies (a parent-death signal), so no process of a cell outlives the
//!   runtime even if the runtime is killed;
//! - it adopts the cell's orphaned children (child subreaper) and reaps them;
//! - the cell runs as `nobody` when the runtime is root, with no-new-privileges, resource limits (address space, CPU seconds,
//!   open files, processes, no core dumps), a parent-death signal of its own, and a
//!   seccomp filter that refuses (EPERM) what a cell never needs: tracing, mounting,
//!   namespaces, BPF, kernel modules and kexec, rebooting, keyrings, leaving its process
//!   group or session, and the like.
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
    pub fn of(limits: &resources::SandboxLimits) -> Result<Self, String> {
        let memory = limits
            .memory
            .as_deref()
            .map(quantity::memory_bytes)
            .transpose()
            .map_err(|e| format!("limits.memory: {e}"))?;
        let cpu_millis = limits
            .cpu
            .as_deref()
            .map(quantity::cpu_millis)
            .transpose()
            .map_err(|e| format!("limits.cpu: {e}"))?;
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
    // Leaving the process group would let a process escape the group kill.
    "setsid",
    "setpgid",
];

/// Whether this process runs as root, and so runs its cells as `nobody`.
pub fn runs_as_root() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        unsafe { libc::geteuid() == 0 }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Stops the cell the sandbox process `sandbox` runs: the sandbox kills the cell's whole
/// process group and exits.
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
pub fn run(_limits: &SandboxLimits, _command: &[String]) -> std::process::ExitCode {
    eprintln!("cellbus sandbox: process cells run in this sandbox on Linux only");
    std::process::ExitCode::from(126)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeMap;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, ExitCode};

    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

    use super::{SandboxLimits, DENIED_SYSCALLS};

    /// The user and group a root runtime runs its cells as.
    const NOBODY: libc::uid_t = 65534;

    /// Runs `command` confined as the module comment says and exits as it exits. Must be
    /// called before any thread is started: it blocks signals for the whole process.
    pub fn run(limits: &SandboxLimits, command: &[String]) -> ExitCode {
        match supervise(limits, command) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("cellbus sandbox: {error}");
                ExitCode::from(126)
            }
        }
    }

    fn supervise(limits: &SandboxLimits, command: &[String]) -> Result<ExitCode, String> {
        let (program, args) = command.split_first().ok_or("no program to run")?;
        if let Some(leaf) = &limits.cgroup {
            // Before the cell exists, so it and all it starts are born inside the leaf.
            std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
                .map_err(|e| format!("joining the cgroup {}: {e}", leaf.display()))?;
        }
        let filter = seccomp_filter()?;
        let signals = watched_signals();
        // SAFETY: plain libc calls on this single-threaded process.
        unsafe {
            // The runtime's death reaches us as SIGTERM, handled below like a stop.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            if libc::getppid() == 1 {
                return Err("the runtime is gone".into());
            }
            // Orphans of the cell become our children, and stay in its group.
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
            // Taken with sigwait below rather than by handlers.
            libc::sigprocmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut());
        }

        let limits = limits.clone();
        let mut child = Command::new(program);
        child.args(args);
        // SAFETY: runs in the forked child before exec; it only makes system calls
        // (no allocation: the filter was built before the fork).
        unsafe {
            child.pre_exec(move || confine(&limits, &filter));
        }
        let child = child
            .spawn()
            .map_err(|e| format!("starting {program}: {e}"))?;
        // The cell leads its own group (set in `confine`); this is its id.
        let group = child.id() as libc::pid_t;
        // Only the cell holds the runtime's pipes now, so the runtime sees the cell
        // closing them.
        release_standard_streams();

        let mut exit = None;
        loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: sigwait on a set we blocked; `signal` outlives the call.
            unsafe { libc::sigwait(&signals, &mut signal) };
            if signal != libc::SIGCHLD {
                // SIGTERM (the runtime stops the cell, or died), SIGINT, SIGHUP.
                // SAFETY: signals the cell's process group.
                unsafe { libc::kill(-group, libc::SIGKILL) };
                continue;
            }
            // Reap everything that ended: the cell, and orphans it left to us.
            loop {
                let mut status: libc::c_int = 0;
                // SAFETY: waitpid with a valid status pointer.
                let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if reaped <= 0 {
                    break;
                }
                if reaped == group {
                    exit = Some(if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    });
                    // Whatever the cell left behind goes with it.
                    // SAFETY: signals the cell's process group.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                }
            }
            if let Some(code) = exit {
                // Wait for the group's stragglers to be reaped, so none outlives us.
                // SAFETY: blocking waitpid for any child until there is none.
                while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)));
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

    /// In the child, before exec.
    fn confine(limits: &SandboxLimits, filter: &BpfProgram) -> std::io::Result<()> {
        let check = |result: libc::c_int| {
            if result == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
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
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
            ))?;
            // A runtime running as root (locally; pods run as 65532) hands its cells to
            // `nobody`: root ignores RLIMIT_NPROC and may undo every other limit.
            if libc::geteuid() == 0 {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(NOBODY))?;
                check(libc::setuid(NOBODY))?;
            }
            check(libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            let set = |resource, value: u64| {
                let limit = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                check(libc::setrlimit(resource, &limit))
            };
            if let Some(memory) = limits.memory {
                set(libc::RLIMIT_AS, memory)?;
            }
            // The soft limit sends SIGXCPU, the hard one SIGKILL a second later.
            let cpu = libc::rlimit {
                rlim_cur: limits.cpu_seconds,
                rlim_max: limits.cpu_seconds + 1,
            };
            check(libc::setrlimit(libc::RLIMIT_CPU, &cpu))?;
            set(libc::RLIMIT_NOFILE, limits.open_files)?;
            set(libc::RLIMIT_NPROC, limits.processes)?;
            set(libc::RLIMIT_CORE, 0)?;
        }
        seccompiler::apply_filter(filter).map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn seccomp_filter() -> Result<BpfProgram, String> {
        let mut rules = BTreeMap::new();
        for name in DENIED_SYSCALLS {
            rules.insert(syscall_number(name)?, Vec::new());
        }
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|e| format!("seccomp on {}: {e}", std::env::consts::ARCH))?;
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(|e| format!("building the seccomp filter: {e}"))?;
        BpfProgram::try_from(filter).map_err(|e| format!("compiling the seccomp filter: {e}"))
    }

    fn syscall_number(name: &str) -> Result<i64, String> {
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
            "setsid" => libc::SYS_setsid,
            "setpgid" => libc::SYS_setpgid,
            #[cfg(not(target_arch = "x86_64"))]
            "iopl" | "ioperm" => return Ok(-1),
            other => return Err(format!("no syscall number for {other}")),
        };
        Ok(number)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn every_denied_syscall_has_a_number_and_the_filter_compiles() {
            for name in super::DENIED_SYSCALLS {
                super::syscall_number(name).unwrap();
            }
            assert!(!super::seccomp_filter().unwrap().is_empty());
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
        assert!(bad.unwrap_err().starts_with("limits.memory:"));
    }
}
