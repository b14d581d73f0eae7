//! cgroup v2 leaves for process cells: each started process gets a leaf of its own under
//! the runtime's cgroup, with `memory.max` (and no swap), `cpu.max` and `pids.max` from the
//! cell's limits and `memory.oom.group`, so running out of memory ends the cell as a whole.
//!
//! This needs the runtime's cgroup delegated to it (writable, offering the memory, cpu and
//! pids controllers): a pod usually does not get that, and then process cells run with
//! rlimits alone, which the runtime says once in its log and in the metric
//! `cellbus_runtime_process_cgroup_limits` (0). When it is delegated, the runtime first moves
//! itself (and whatever else ran there) into the leaf `runtime`, because a cgroup that hands
//! controllers to its children may hold no process itself.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tracing::{info, warn};

use crate::metrics::Metrics;

/// The controllers a leaf needs.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// The leaf the runtime moves itself into.
const RUNTIME_LEAF: &str = "runtime";
/// Leaves of cell processes are named `cell-{service}-{n}`.
const CELL_LEAF_PREFIX: &str = "cell-";
/// What rmdir(2) says of a cgroup that still holds processes.
const EBUSY: i32 = 16;
/// The period `cpu.max` quotas are written against (the kernel's default), in µs.
const CPU_PERIOD_MICROS: u64 = 100_000;

/// Where process cells' cgroup leaves go, decided once per runtime on first use.
#[derive(Clone, Debug)]
pub struct CellCgroups {
    placement: Placement,
    state: Arc<OnceLock<Option<Arc<Cgroups>>>>,
}

#[derive(Clone, Debug)]
enum Placement {
    /// The runtime's own cgroup, from /proc/self/cgroup, if it is delegated.
    Detect,
    /// This directory, taken to be the runtime's delegated cgroup.
    Delegated(PathBuf),
}

impl CellCgroups {
    /// Leaves under the runtime's own cgroup when it is delegated.
    pub fn detect() -> Self {
        Self::with(Placement::Detect)
    }

    /// Leaves under `dir`, which must be a delegated cgroup v2 directory holding this
    /// process (or, in tests, a directory laid out like one).
    pub fn delegated(dir: impl Into<PathBuf>) -> Self {
        Self::with(Placement::Delegated(dir.into()))
    }

    fn with(placement: Placement) -> Self {
        Self {
            placement,
            state: Arc::default(),
        }
    }

    /// The cgroups to place processes in, or `None` when there are none. The first call
    /// takes the cgroup over and says in the log and `metrics` how that went.
    pub fn get(&self, metrics: &Metrics) -> Option<&Arc<Cgroups>> {
        self.state
            .get_or_init(|| {
                if !cfg!(target_os = "linux") {
                    // Elsewhere the sandbox itself holds the limits (a Job Object on
                    // Windows): nothing to say.
                    metrics.process_cgroup_limits.set(0);
                    return None;
                }
                let taken = match &self.placement {
                    Placement::Detect => delegation().and_then(|dir| Cgroups::take_over(&dir)),
                    Placement::Delegated(dir) => Cgroups::take_over(dir),
                };
                match taken {
                    Ok(cgroups) => {
                        metrics.process_cgroup_limits.set(1);
                        info!(
                            cgroup = %cgroups.dir.display(),
                            "process cells run in cgroup leaves with memory.max, cpu.max and pids.max"
                        );
                        Some(Arc::new(cgroups))
                    }
                    Err(error) => {
                        metrics.process_cgroup_limits.set(0);
                        warn!(
                            why = %cellbus_contracts::error_chain(&error),
                            "process cells run with rlimits only, without cgroup memory, cpu and pids limits"
                        );
                        None
                    }
                }
            })
            .as_ref()
    }
}

/// The limits written into a leaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeafLimits {
    /// `memory.max` in bytes; unlimited when `None`.
    pub memory: Option<u64>,
    /// `cpu.max` in thousandths of a CPU; unlimited when `None`.
    pub cpu_millis: Option<u64>,
    /// `pids.max`: processes and threads together.
    pub pids: u64,
}

impl LeafLimits {
    /// The interface files of a leaf and what goes into each, in the order they are written.
    pub fn files(&self) -> [(&'static str, String); 4] {
        let max = |value: Option<u64>| value.map_or_else(|| "max".to_owned(), |v| v.to_string());
        let cpu = match self.cpu_millis {
            // A quota below 1 ms per period is refused by the kernel.
            Some(millis) => format!(
                "{} {CPU_PERIOD_MICROS}",
                (millis * CPU_PERIOD_MICROS / 1000).max(1000)
            ),
            None => format!("max {CPU_PERIOD_MICROS}"),
        };
        [
            ("memory.max", max(self.memory)),
            ("memory.oom.group", "1".to_owned()),
            ("cpu.max", cpu),
            ("pids.max", self.pids.to_string()),
        ]
    }
}

/// A delegated cgroup the runtime has taken over.
#[derive(Debug)]
pub struct Cgroups {
    dir: PathBuf,
    next: AtomicU64,
}

impl Cgroups {
    /// Takes over the delegated cgroup `dir`: moves every process in it into the leaf
    /// `runtime`, hands the memory, cpu and pids controllers to its children, and removes
    /// cell leaves an earlier runtime left empty.
    pub fn take_over(dir: &Path) -> Result<Self, CgroupError> {
        check_delegated(dir)?;
        let runtime = dir.join(RUNTIME_LEAF);
        create_dir(&runtime).map_err(|source| CgroupError::CreateLeaf {
            leaf: runtime.clone(),
            source,
        })?;
        let procs_file = dir.join("cgroup.procs");
        let procs = std::fs::read_to_string(&procs_file).map_err(|source| CgroupError::Read {
            file: procs_file,
            source,
        })?;
        let own = std::process::id().to_string();
        // Our own process first: if only that moves, the others are reported below.
        let mut pids: Vec<&str> = procs.split_whitespace().filter(|p| *p != own).collect();
        pids.insert(0, &own);
        for pid in pids {
            if let Err(error) = std::fs::write(runtime.join("cgroup.procs"), pid) {
                if pid == own {
                    return Err(CgroupError::MoveRuntime {
                        leaf: runtime,
                        source: error,
                    });
                }
                // It may have exited meanwhile; if it did not, enabling fails below.
                warn!(pid, %error, "could not move a process out of the runtime's cgroup");
            }
        }
        let wanted = CONTROLLERS.map(|c| format!("+{c}")).join(" ");
        let subtree_control = dir.join("cgroup.subtree_control");
        std::fs::write(&subtree_control, &wanted).map_err(|source| {
            CgroupError::EnableControllers {
                wanted,
                file: subtree_control,
                source,
            }
        })?;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(CELL_LEAF_PREFIX)
                {
                    // Only empty ones go; a busy one fails, and stays.
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            next: AtomicU64::new(1),
        })
    }

    /// The directory whose children the leaves are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new leaf for one process of `service`, with `limits` written.
    pub fn leaf(&self, service: &str, limits: &LeafLimits) -> io::Result<Leaf> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{CELL_LEAF_PREFIX}{service}-{n}"));
        create_dir(&path)?;
        let leaf = Leaf { path };
        for (file, value) in limits.files() {
            if let Err(error) = std::fs::write(leaf.path.join(file), &value) {
                let _ = std::fs::remove_dir(&leaf.path);
                return Err(io::Error::new(
                    error.kind(),
                    format!("writing {value} to {}/{file}: {error}", leaf.path.display()),
                ));
            }
        }
        // Without this, memory.max would push the cell into swap instead of stopping it.
        // Not every kernel has swap accounting, so a missing file is fine.
        match std::fs::write(leaf.path.join("memory.swap.max"), "0") {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                warn!(leaf = %leaf.path.display(), %error, "could not turn swap off for a cell")
            }
            _ => {}
        }
        Ok(leaf)
    }
}

/// One process's leaf. The sandbox process moves itself in before it starts the cell.
#[derive(Debug)]
pub struct Leaf {
    path: PathBuf,
}

impl Leaf {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Kills whatever still runs in the leaf and removes it. Called once its sandbox
    /// process has exited, which normally took everything with it.
    pub fn remove(self) {
        if !self.is_empty() {
            self.kill();
        }
        for _ in 0..20 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return,
                // Still holding processes: a killed one leaves a moment after it dies.
                Err(error) if error.raw_os_error() == Some(EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(error) => {
                    warn!(leaf = %self.path.display(), %error, "could not remove a cell's cgroup");
                    return;
                }
            }
        }
        warn!(leaf = %self.path.display(), "a cell's cgroup still holds processes");
    }

    fn is_empty(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|procs| procs.trim().is_empty() || procs.trim() == "0")
            .unwrap_or(true)
    }

    /// Kills every process in the leaf: `cgroup.kill` where the kernel has it (5.14),
    /// else each process listed.
    fn kill(&self) {
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        #[cfg(unix)]
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                if pid > 0 {
                    // SAFETY: kill(2) with a pid read from the leaf; no memory involved.
                    #[allow(unsafe_code)]
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

fn create_dir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Why the runtime's cgroup cannot hold its cells' processes.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup v2 membership (a v1 hierarchy)")]
    NoV2Membership,
    #[error("{} is not a cgroup v2 directory (a v1 or hybrid hierarchy?)", dir.display())]
    NotV2 {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} does not offer the controllers {}", dir.display(), missing.join(", "))]
    MissingControllers {
        dir: PathBuf,
        missing: Vec<&'static str>,
    },
    #[error("{} is not writable, so the cgroup is not delegated to the runtime", file.display())]
    NotDelegated {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating {}", leaf.display())]
    CreateLeaf {
        leaf: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("moving the runtime into {}", leaf.display())]
    MoveRuntime {
        leaf: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("enabling {wanted} in {}", file.display())]
    EnableControllers {
        wanted: String,
        file: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// This process's cgroup, if it is delegated (see [`check_delegated`]).
fn delegation() -> Result<PathBuf, CgroupError> {
    let file = PathBuf::from("/proc/self/cgroup");
    let membership =
        std::fs::read_to_string(&file).map_err(|source| CgroupError::Read { file, source })?;
    let dir = own_cgroup(&membership, Path::new("/sys/fs/cgroup"))?;
    check_delegated(&dir)?;
    Ok(dir)
}

/// The cgroup v2 directory of a process whose /proc/self/cgroup reads `membership`, with
/// the hierarchy mounted at `root`.
fn own_cgroup(membership: &str, root: &Path) -> Result<PathBuf, CgroupError> {
    let relative = membership
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or(CgroupError::NoV2Membership)?;
    Ok(root.join(relative.trim_start_matches('/')))
}

/// Whether `dir` is a cgroup v2 directory offering the memory, cpu and pids controllers,
/// whose `cgroup.procs` and `cgroup.subtree_control` this process may write.
fn check_delegated(dir: &Path) -> Result<(), CgroupError> {
    let controllers =
        std::fs::read_to_string(dir.join("cgroup.controllers")).map_err(|source| {
            CgroupError::NotV2 {
                dir: dir.to_owned(),
                source,
            }
        })?;
    let missing: Vec<&str> = CONTROLLERS
        .into_iter()
        .filter(|wanted| !controllers.split_whitespace().any(|c| c == *wanted))
        .collect();
    if !missing.is_empty() {
        return Err(CgroupError::MissingControllers {
            dir: dir.to_owned(),
            missing,
        });
    }
    for file in ["cgroup.subtree_control", "cgroup.procs"] {
        let file = dir.join(file);
        if let Err(source) = std::fs::OpenOptions::new().write(true).open(&file) {
            return Err(CgroupError::NotDelegated { file, source });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like a delegated cgroup holding this process and one other.
    fn fake_cgroup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        std::fs::write(
            dir.path().join("cgroup.procs"),
            format!("4242\n{}\n", std::process::id()),
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_delegated_cgroup_needs_v2_the_three_controllers_and_write_access() {
        let root = tempfile::tempdir().unwrap();
        let v1 = own_cgroup("4:memory:/x\n1:cpu:/\n", root.path())
            .unwrap_err()
            .to_string();
        assert!(v1.contains("no cgroup v2"), "{v1}");
        let dir = own_cgroup("0::/kubepods/pod1\n", root.path()).unwrap();
        assert_eq!(dir, root.path().join("kubepods/pod1"));
        std::fs::create_dir_all(&dir).unwrap();

        let hybrid = check_delegated(&dir).unwrap_err().to_string();
        assert!(hybrid.contains("not a cgroup v2 directory"), "{hybrid}");
        std::fs::write(dir.join("cgroup.controllers"), "cpuset cpu io memory\n").unwrap();
        let missing = check_delegated(&dir).unwrap_err().to_string();
        assert!(
            missing.ends_with("does not offer the controllers pids"),
            "{missing}"
        );
        std::fs::write(dir.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let unwritable = check_delegated(&dir).unwrap_err().to_string();
        assert!(
            unwritable.contains("cgroup.subtree_control is not writable"),
            "{unwritable}"
        );
        std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        let unwritable = check_delegated(&dir).unwrap_err().to_string();
        assert!(
            unwritable.contains("cgroup.procs is not writable"),
            "{unwritable}"
        );
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        check_delegated(&dir).unwrap();
    }

    #[test]
    fn taking_over_moves_the_runtime_out_and_hands_the_controllers_down() {
        let dir = fake_cgroup();
        std::fs::create_dir(dir.path().join("cell-echo-3")).unwrap();
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        let cgroups = Cgroups::take_over(dir.path()).unwrap();
        // Each write to cgroup.procs moves one process; a plain file keeps the last.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("runtime/cgroup.procs")).unwrap(),
            "4242"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        assert!(
            !dir.path().join("cell-echo-3").exists(),
            "a stale leaf stays"
        );
        assert!(dir.path().join("elsewhere").exists());
        assert_eq!(cgroups.dir(), dir.path());
    }

    #[test]
    fn a_leaf_gets_the_cells_limits() {
        let dir = fake_cgroup();
        let cgroups = Cgroups::take_over(dir.path()).unwrap();
        let limits = LeafLimits {
            memory: Some(64 << 20),
            cpu_millis: Some(250),
            pids: 64,
        };
        let first = cgroups.leaf("echo", &limits).unwrap();
        let second = cgroups.leaf("echo", &LeafLimits::default()).unwrap();
        assert_eq!(first.path(), dir.path().join("cell-echo-1"));
        assert_eq!(second.path(), dir.path().join("cell-echo-2"));
        let read =
            |leaf: &Leaf, file: &str| std::fs::read_to_string(leaf.path().join(file)).unwrap();
        assert_eq!(read(&first, "memory.max"), "67108864");
        assert_eq!(read(&first, "memory.oom.group"), "1");
        assert_eq!(read(&first, "memory.swap.max"), "0");
        assert_eq!(read(&first, "cpu.max"), "25000 100000");
        assert_eq!(read(&first, "pids.max"), "64");
        assert_eq!(read(&second, "memory.max"), "max");
        assert_eq!(read(&second, "cpu.max"), "max 100000");
        assert_eq!(read(&second, "pids.max"), "0");
    }

    #[test]
    fn cpu_quotas_never_go_below_the_kernels_minimum() {
        let limits = |millis| LeafLimits {
            cpu_millis: Some(millis),
            ..LeafLimits::default()
        };
        assert_eq!(limits(1).files()[2].1, "1000 100000");
        assert_eq!(limits(1500).files()[2].1, "150000 100000");
    }

    #[test]
    fn an_unusable_cgroup_is_reported_once_and_processes_run_without() {
        let metrics = Metrics::new();
        let missing = tempfile::tempdir().unwrap();
        let cgroups = CellCgroups::delegated(missing.path().join("nowhere"));
        assert!(cgroups.get(&metrics).is_none());
        assert_eq!(metrics.process_cgroup_limits.get(), 0);
        let dir = fake_cgroup();
        let cgroups = CellCgroups::delegated(dir.path());
        assert!(cgroups.get(&metrics).is_some());
        assert_eq!(metrics.process_cgroup_limits.get(), 1);
        assert!(Arc::ptr_eq(
            cgroups.get(&metrics).unwrap(),
            cgroups.clone().get(&metrics).unwrap()
        ));
    }
}
