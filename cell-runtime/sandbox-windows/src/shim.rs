//! `cellbus-sandbox`, the Windows counterpart of the Linux `cellbus sandbox`: the runtime
//! starts one per process cell with the same flags, and it runs the cell inside a Job
//! Object of its own. This module reads those flags into a [`JobPolicy`] and finds the
//! program; plain code, tested anywhere.
//!
//! ```text
//! cellbus-sandbox sandbox [--memory BYTES] [--cpu-millis M] [--processes N]
//!                         [--cpu-seconds S] [--open-files N] -- PROGRAM [ARGS…]
//! ```
//!
//! `--memory` limits each process and the job as a whole; `--cpu-millis` is a hard CPU
//! rate cap; `--processes` the processes the job may hold at once. `--cpu-seconds` and
//! `--open-files` are Linux rlimits with no Job Object counterpart that holds a cell the
//! same way, so they are accepted and not applied (deadlines stop a spinning cell).
#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};

use crate::policy::{JobPolicy, PolicyError};

/// What one `cellbus-sandbox` run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub policy: JobPolicy,
    pub program: String,
    pub args: Vec<String>,
}

/// Why the arguments do not make an [`Invocation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShimError {
    /// The first argument is not the `sandbox` command.
    NotSandbox(String),
    /// A flag this sandbox does not know.
    UnknownFlag(String),
    /// A flag with no value after it.
    MissingValue(String),
    /// A flag whose value is not a whole number.
    NotANumber { flag: String, value: String },
    /// A value the job cannot take.
    Policy(PolicyError),
    /// Nothing after `--`.
    NoProgram,
}

impl fmt::Display for ShimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShimError::NotSandbox(first) => {
                write!(f, "expected the `sandbox` command, got `{first}`")
            }
            ShimError::UnknownFlag(flag) => write!(f, "unknown flag `{flag}`"),
            ShimError::MissingValue(flag) => write!(f, "`{flag}` needs a value"),
            ShimError::NotANumber { flag, value } => {
                write!(f, "`{flag}`: `{value}` is not a whole number")
            }
            ShimError::Policy(error) => write!(f, "{error}"),
            ShimError::NoProgram => write!(f, "no program to run after `--`"),
        }
    }
}

impl std::error::Error for ShimError {}

impl From<PolicyError> for ShimError {
    fn from(error: PolicyError) -> Self {
        ShimError::Policy(error)
    }
}

/// Reads the arguments after the executable's own name.
pub fn parse(args: &[String]) -> Result<Invocation, ShimError> {
    let mut args = args.iter();
    match args.next() {
        Some(first) if first == "sandbox" => {}
        Some(first) => return Err(ShimError::NotSandbox(first.clone())),
        None => return Err(ShimError::NotSandbox(String::new())),
    }
    let mut policy = JobPolicy::new();
    loop {
        let flag = match args.next() {
            Some(flag) => flag,
            None => return Err(ShimError::NoProgram),
        };
        if flag == "--" {
            break;
        }
        let known = [
            "--memory",
            "--cpu-millis",
            "--processes",
            "--cpu-seconds",
            "--open-files",
        ];
        if !known.contains(&flag.as_str()) {
            return Err(ShimError::UnknownFlag(flag.clone()));
        }
        let value = args
            .next()
            .ok_or_else(|| ShimError::MissingValue(flag.clone()))?;
        let number: u64 = value.parse().map_err(|_| ShimError::NotANumber {
            flag: flag.clone(),
            value: value.clone(),
        })?;
        policy = match flag.as_str() {
            "--memory" => policy.process_memory(value)?.job_memory(value)?,
            "--cpu-millis" => policy.cpu(&format!("{number}m"))?,
            "--processes" => policy.active_processes(u32::try_from(number).unwrap_or(u32::MAX))?,
            // Accepted for the Linux sandbox's sake; see the module comment.
            _ => policy,
        };
    }
    let program = args.next().ok_or(ShimError::NoProgram)?.clone();
    Ok(Invocation {
        policy,
        program,
        args: args.cloned().collect(),
    })
}

/// Where `program` is: itself when it names a path, else the first match on `path` (the
/// `PATH` variable, `;`-separated), trying the name as given and with `.exe`.
pub fn resolve(program: &str, path: &str, exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if program.contains('\\') || program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let has_extension = Path::new(program).extension().is_some();
    // Joined by hand: these are Windows paths even where the tests run on Linux.
    let join = |dir: &str, name: &str| {
        let dir = dir.trim_end_matches(['\\', '/']);
        PathBuf::from(format!("{dir}\\{name}"))
    };
    path.split(';')
        .filter(|dir| !dir.is_empty())
        .flat_map(|dir| {
            let exe = if has_extension {
                None
            } else {
                Some(join(dir, &format!("{program}.exe")))
            };
            exe.into_iter().chain(std::iter::once(join(dir, program)))
        })
        .find(|candidate| exists(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Field;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn the_linux_sandboxs_flags_become_a_job_policy() {
        let run = parse(&args(
            "sandbox --memory 67108864 --cpu-seconds 3600 --open-files 1024 --processes 16 \
             --cpu-millis 250 -- python cell.py --verbose",
        ))
        .unwrap();
        assert_eq!(run.policy.process_memory, Some(64 << 20));
        assert_eq!(run.policy.job_memory, Some(64 << 20));
        assert_eq!(run.policy.active_processes, Some(16));
        assert_eq!(run.policy.cpu_millis, Some(250));
        assert_eq!(run.program, "python");
        assert_eq!(run.args, ["cell.py", "--verbose"]);
        let bare = parse(&args("sandbox -- cell.exe")).unwrap();
        assert_eq!(bare.policy, JobPolicy::new());
        assert!(bare.args.is_empty());
    }

    #[test]
    fn bad_arguments_name_what_is_wrong() {
        let error = |line: &str| parse(&args(line)).unwrap_err();
        assert_eq!(error("serve -- x"), ShimError::NotSandbox("serve".into()));
        assert_eq!(
            error("sandbox --cgroup /sys/fs/cgroup/x -- x"),
            ShimError::UnknownFlag("--cgroup".into())
        );
        assert_eq!(
            error("sandbox --memory"),
            ShimError::MissingValue("--memory".into())
        );
        assert_eq!(
            error("sandbox --processes lots -- x"),
            ShimError::NotANumber {
                flag: "--processes".into(),
                value: "lots".into()
            }
        );
        assert_eq!(error("sandbox --memory 1"), ShimError::NoProgram);
        assert_eq!(error("sandbox --memory 1 --"), ShimError::NoProgram);
        match error("sandbox --processes 0 -- x") {
            ShimError::Policy(policy) => assert_eq!(policy.field(), Field::ActiveProcesses),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            error("sandbox --processes 0 -- x").to_string(),
            "activeProcesses: `0` is zero, and a job with none could not run"
        );
    }

    #[test]
    fn programs_are_found_on_path_with_or_without_exe() {
        let present = |p: &Path| {
            [r"C:\Python\python.exe", r"C:\tools\cell.cmd"]
                .iter()
                .any(|known| p == Path::new(known))
        };
        let path = r"C:\Windows;;C:\Python;C:\tools";
        assert_eq!(
            resolve("python", path, present),
            Some(PathBuf::from(r"C:\Python\python.exe"))
        );
        assert_eq!(
            resolve("cell.cmd", path, present),
            Some(PathBuf::from(r"C:\tools\cell.cmd"))
        );
        assert_eq!(resolve("dart", path, present), None);
        assert_eq!(
            resolve(r"C:\cells\cell.exe", path, present),
            Some(PathBuf::from(r"C:\cells\cell.exe"))
        );
    }
}
