//! `cellbus-sandbox`, the Windows counterpart of the Linux `cellbus sandbox`: the runtime
//! starts one per process cell with the same flags, and it runs the cell inside a Job
//! Object and an AppContainer of its own. This module reads those flags into a
//! [`JobPolicy`] and a [`Confinement`] and finds the program; plain code, tested anywhere.
//!
//! ```text
//! cellbus-sandbox sandbox [--memory BYTES] [--cpu-millis M] [--processes N]
//!                         [--cpu-seconds S] [--open-files N]
//!                         --uid N --cells-dir DIR [--read PATH]… [--network]
//!                         -- PROGRAM [ARGS…]
//! ```
//!
//! `--uid` and `--cells-dir` are required: they name the cell's AppContainer and its
//! directories, and a cell never runs without an AppContainer.
//!
//! `--memory` limits each process and the job as a whole; `--cpu-millis` is a hard CPU
//! rate cap; `--processes` the processes the job may hold at once. `--cpu-seconds` and
//! `--open-files` are Linux rlimits with no Job Object counterpart that holds a cell the
//! same way, so they are accepted and not applied (deadlines stop a spinning cell).
#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};

use crate::container::Confinement;
use crate::policy::{JobPolicy, PolicyError};

/// What one `cellbus-sandbox` run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub policy: JobPolicy,
    pub confinement: Confinement,
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
    /// A required flag is missing.
    MissingFlag(&'static str),
    /// A flag given twice that may be given once.
    Repeated(String),
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
            ShimError::MissingFlag(flag) => {
                write!(
                    f,
                    "`{flag}` is required: a cell runs only in an AppContainer of its own"
                )
            }
            ShimError::Repeated(flag) => write!(f, "`{flag}` is given more than once"),
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
    let mut uid: Option<u32> = None;
    let mut cells_dir: Option<PathBuf> = None;
    let mut readable = Vec::new();
    let mut network = false;
    loop {
        let flag = match args.next() {
            Some(flag) => flag,
            None => return Err(ShimError::NoProgram),
        };
        match flag.as_str() {
            "--" => break,
            "--network" => {
                if network {
                    return Err(ShimError::Repeated(flag.clone()));
                }
                network = true;
                continue;
            }
            "--memory" | "--cpu-millis" | "--processes" | "--cpu-seconds" | "--open-files"
            | "--uid" | "--cells-dir" | "--read" => {}
            _ => return Err(ShimError::UnknownFlag(flag.clone())),
        }
        let value = args
            .next()
            .ok_or_else(|| ShimError::MissingValue(flag.clone()))?;
        match flag.as_str() {
            "--cells-dir" => {
                if cells_dir.replace(PathBuf::from(value)).is_some() {
                    return Err(ShimError::Repeated(flag.clone()));
                }
                continue;
            }
            "--read" => {
                readable.push(PathBuf::from(value));
                continue;
            }
            _ => {}
        }
        let number: u64 = value.parse().map_err(|_| ShimError::NotANumber {
            flag: flag.clone(),
            value: value.clone(),
        })?;
        policy = match flag.as_str() {
            "--memory" => policy.process_memory(value)?.job_memory(value)?,
            "--cpu-millis" => policy.cpu(&format!("{number}m"))?,
            "--processes" => policy.active_processes(u32::try_from(number).unwrap_or(u32::MAX))?,
            "--uid" => {
                let number = u32::try_from(number).map_err(|_| ShimError::NotANumber {
                    flag: flag.clone(),
                    value: value.clone(),
                })?;
                if uid.replace(number).is_some() {
                    return Err(ShimError::Repeated(flag.clone()));
                }
                policy
            }
            // Accepted for the Linux sandbox's sake; see the module comment.
            _ => policy,
        };
    }
    let program = args.next().ok_or(ShimError::NoProgram)?.clone();
    let confinement = Confinement {
        uid: uid.ok_or(ShimError::MissingFlag("--uid"))?,
        cells_dir: cells_dir.ok_or(ShimError::MissingFlag("--cells-dir"))?,
        readable,
        network,
    };
    Ok(Invocation {
        policy,
        confinement,
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

    /// The confinement flags every run needs, as the runtime passes them.
    const CELL: &str = r"--uid 1007 --cells-dir C:\cells";

    #[test]
    fn the_linux_sandboxs_flags_become_a_job_policy_and_a_confinement() {
        let run = parse(&args(
            r"sandbox --memory 67108864 --cpu-seconds 3600 --open-files 1024 --processes 16 --cpu-millis 250 --uid 1007 --cells-dir C:\cells --read C:\exe\cell.exe --read C:\sdk --network -- python cell.py --verbose",
        ))
        .unwrap();
        assert_eq!(run.policy.process_memory, Some(64 << 20));
        assert_eq!(run.policy.job_memory, Some(64 << 20));
        assert_eq!(run.policy.active_processes, Some(16));
        assert_eq!(run.policy.cpu_millis, Some(250));
        assert_eq!(
            run.confinement,
            Confinement {
                uid: 1007,
                cells_dir: PathBuf::from(r"C:\cells"),
                readable: vec![PathBuf::from(r"C:\exe\cell.exe"), PathBuf::from(r"C:\sdk")],
                network: true,
            }
        );
        assert_eq!(run.program, "python");
        assert_eq!(run.args, ["cell.py", "--verbose"]);
        let bare = parse(&args(&format!("sandbox {CELL} -- cell.exe"))).unwrap();
        assert_eq!(bare.policy, JobPolicy::new());
        assert!(bare.confinement.readable.is_empty());
        assert!(!bare.confinement.network);
        assert!(bare.args.is_empty());
        // Flags after `--` are the cell's.
        let theirs = parse(&args(&format!("sandbox {CELL} -- cell.exe --network"))).unwrap();
        assert!(!theirs.confinement.network);
        assert_eq!(theirs.args, ["--network"]);
    }

    #[test]
    fn bad_arguments_name_what_is_wrong() {
        let cases: Vec<(String, ShimError, &str)> = vec![
            (
                "serve -- x".into(),
                ShimError::NotSandbox("serve".into()),
                "expected the `sandbox` command, got `serve`",
            ),
            (
                format!(r"sandbox --cgroup C:\x {CELL} -- x"),
                ShimError::UnknownFlag("--cgroup".into()),
                "unknown flag `--cgroup`",
            ),
            (
                "sandbox --memory".into(),
                ShimError::MissingValue("--memory".into()),
                "`--memory` needs a value",
            ),
            (
                "sandbox --uid 3 --read".into(),
                ShimError::MissingValue("--read".into()),
                "`--read` needs a value",
            ),
            (
                format!("sandbox {CELL} --processes lots -- x"),
                ShimError::NotANumber {
                    flag: "--processes".into(),
                    value: "lots".into(),
                },
                "`--processes`: `lots` is not a whole number",
            ),
            (
                r"sandbox --uid 4294967296 --cells-dir C:\cells -- x".into(),
                ShimError::NotANumber {
                    flag: "--uid".into(),
                    value: "4294967296".into(),
                },
                "`--uid`: `4294967296` is not a whole number",
            ),
            (
                r"sandbox --uid -1 --cells-dir C:\cells -- x".into(),
                ShimError::NotANumber {
                    flag: "--uid".into(),
                    value: "-1".into(),
                },
                "`--uid`: `-1` is not a whole number",
            ),
            (
                format!("sandbox {CELL} --memory 1"),
                ShimError::NoProgram,
                "no program to run after `--`",
            ),
            (
                format!("sandbox {CELL} --"),
                ShimError::NoProgram,
                "no program to run after `--`",
            ),
            (
                r"sandbox --cells-dir C:\cells -- x".into(),
                ShimError::MissingFlag("--uid"),
                "`--uid` is required: a cell runs only in an AppContainer of its own",
            ),
            (
                "sandbox --uid 3 -- x".into(),
                ShimError::MissingFlag("--cells-dir"),
                "`--cells-dir` is required: a cell runs only in an AppContainer of its own",
            ),
            (
                format!("sandbox {CELL} --uid 4 -- x"),
                ShimError::Repeated("--uid".into()),
                "`--uid` is given more than once",
            ),
            (
                format!(r"sandbox {CELL} --cells-dir D:\cells -- x"),
                ShimError::Repeated("--cells-dir".into()),
                "`--cells-dir` is given more than once",
            ),
            (
                format!("sandbox {CELL} --network --network -- x"),
                ShimError::Repeated("--network".into()),
                "`--network` is given more than once",
            ),
        ];
        for (line, error, message) in cases {
            let got = parse(&args(&line)).unwrap_err();
            assert_eq!(got, error, "{line}");
            assert_eq!(got.to_string(), message, "{line}");
        }
        match parse(&args(&format!("sandbox {CELL} --processes 0 -- x"))).unwrap_err() {
            ShimError::Policy(policy) => {
                assert_eq!(policy.field(), Field::ActiveProcesses);
                assert_eq!(
                    policy.to_string(),
                    "activeProcesses: `0` is zero, and a job with none could not run"
                );
            }
            other => panic!("{other:?}"),
        }
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
