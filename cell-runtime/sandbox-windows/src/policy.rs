//! What a cell's Job Object enforces, from the Kubernetes quantities of its spec to the raw
//! values of JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOBOBJECT_CPU_RATE_CONTROL_INFORMATION
//! and JOBOBJECT_BASIC_UI_RESTRICTIONS. No system call: it compiles and is tested anywhere.
#![forbid(unsafe_code)]

use std::fmt;

use crate::quantity::{self, QuantityFault};

// Flag values as winnt.h documents them; `job.rs` asserts at compile time that windows-sys
// agrees, so these can be tested on Linux and cannot drift from what Windows reads.

/// `JOBOBJECT_BASIC_LIMIT_INFORMATION.LimitFlags`: `ActiveProcessLimit` applies.
pub const JOB_OBJECT_LIMIT_ACTIVE_PROCESS: u32 = 0x0000_0008;
/// `LimitFlags`: `ProcessMemoryLimit` (committed memory of each process) applies.
pub const JOB_OBJECT_LIMIT_PROCESS_MEMORY: u32 = 0x0000_0100;
/// `LimitFlags`: `JobMemoryLimit` (committed memory of all processes together) applies.
pub const JOB_OBJECT_LIMIT_JOB_MEMORY: u32 = 0x0000_0200;
/// `LimitFlags`: an unhandled exception ends the process, with no error box or debugger.
pub const JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION: u32 = 0x0000_0400;
/// `LimitFlags`: closing the last handle to the job terminates every process in it.
pub const JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE: u32 = 0x0000_2000;

/// `JOBOBJECT_CPU_RATE_CONTROL_INFORMATION.ControlFlags`: rate control is on.
pub const JOB_OBJECT_CPU_RATE_CONTROL_ENABLE: u32 = 0x1;
/// `ControlFlags`: `CpuRate` is a hard cap, not a target the job may exceed when idle.
pub const JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP: u32 = 0x4;

/// `JOBOBJECT_BASIC_UI_RESTRICTIONS.UIRestrictionsClass`: no USER handles of other processes.
pub const JOB_OBJECT_UILIMIT_HANDLES: u32 = 0x0001;
/// `UIRestrictionsClass`: no reading the clipboard.
pub const JOB_OBJECT_UILIMIT_READCLIPBOARD: u32 = 0x0002;
/// `UIRestrictionsClass`: no writing the clipboard.
pub const JOB_OBJECT_UILIMIT_WRITECLIPBOARD: u32 = 0x0004;
/// `UIRestrictionsClass`: no `SystemParametersInfo` changes.
pub const JOB_OBJECT_UILIMIT_SYSTEMPARAMETERS: u32 = 0x0008;
/// `UIRestrictionsClass`: no `ChangeDisplaySettings`.
pub const JOB_OBJECT_UILIMIT_DISPLAYSETTINGS: u32 = 0x0010;
/// `UIRestrictionsClass`: no global atom table of its own choosing.
pub const JOB_OBJECT_UILIMIT_GLOBALATOMS: u32 = 0x0020;
/// `UIRestrictionsClass`: no creating or switching desktops.
pub const JOB_OBJECT_UILIMIT_DESKTOP: u32 = 0x0040;
/// `UIRestrictionsClass`: no `ExitWindows(Ex)`: a cell cannot log off or shut down the node.
pub const JOB_OBJECT_UILIMIT_EXITWINDOWS: u32 = 0x0080;

/// `CpuRate` is in cycles per 10,000 of the whole machine (all logical processors).
pub const CPU_RATE_FULL_MACHINE: u32 = 10_000;

/// Flags every cell's job carries: its processes die with the job's last handle (so a
/// runtime that exits or drops the job leaves nothing behind), and a crash ends the process
/// at once instead of waiting on an error box or a debugger no one will answer.
const ALWAYS: u32 =
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION;

/// Every UI restriction: a cell is a service, it has no business with the desktop.
pub const UI_RESTRICTIONS: u32 = JOB_OBJECT_UILIMIT_HANDLES
    | JOB_OBJECT_UILIMIT_READCLIPBOARD
    | JOB_OBJECT_UILIMIT_WRITECLIPBOARD
    | JOB_OBJECT_UILIMIT_SYSTEMPARAMETERS
    | JOB_OBJECT_UILIMIT_DISPLAYSETTINGS
    | JOB_OBJECT_UILIMIT_GLOBALATOMS
    | JOB_OBJECT_UILIMIT_DESKTOP
    | JOB_OBJECT_UILIMIT_EXITWINDOWS;

/// The limits of one cell's job, validated. `None` means no limit of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobPolicy {
    /// Bytes of committed memory each process of the job may hold.
    pub process_memory: Option<u64>,
    /// Bytes of committed memory all processes of the job may hold together.
    pub job_memory: Option<u64>,
    /// Processes the job may hold at once, the first one included.
    pub active_processes: Option<u32>,
    /// CPU the job may use, in Kubernetes millicores (`500` is half of one processor).
    pub cpu_millis: Option<u32>,
}

/// A `JobPolicy` field, named as in error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    ProcessMemory,
    JobMemory,
    ActiveProcesses,
    Cpu,
}

impl Field {
    pub const fn name(self) -> &'static str {
        match self {
            Field::ProcessMemory => "processMemory",
            Field::JobMemory => "jobMemory",
            Field::ActiveProcesses => "activeProcesses",
            Field::Cpu => "cpu",
        }
    }

    const fn example(self) -> &'static str {
        match self {
            Field::ProcessMemory | Field::JobMemory => {
                "a memory quantity such as 64Mi, 1Gi, 1.5G or 65536"
            }
            Field::ActiveProcesses => "a whole number of processes",
            Field::Cpu => "a CPU quantity such as 500m, 2 or 0.25",
        }
    }
}

/// Why a value cannot become part of a `JobPolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// Not a quantity of the kind the field takes.
    Unparsable { field: Field, value: String },
    /// A quantity below zero.
    Negative { field: Field, value: String },
    /// Zero: a job that may hold no memory, no process or no CPU could never run.
    Zero { field: Field, value: String },
    /// More than the field can hold (memory past `u64`, CPU past `u32` millicores).
    TooLarge { field: Field, value: String },
    /// The whole job may hold less memory than one of its processes alone.
    JobMemoryBelowProcessMemory { job: u64, process: u64 },
}

impl PolicyError {
    /// The field the error is about (the job's memory for the one naming two).
    pub fn field(&self) -> Field {
        match self {
            PolicyError::Unparsable { field, .. }
            | PolicyError::Negative { field, .. }
            | PolicyError::Zero { field, .. }
            | PolicyError::TooLarge { field, .. } => *field,
            PolicyError::JobMemoryBelowProcessMemory { .. } => Field::JobMemory,
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Unparsable { field, value } => {
                write!(f, "{}: `{value}` is not {}", field.name(), field.example())
            }
            PolicyError::Negative { field, value } => {
                write!(f, "{}: `{value}` is negative", field.name())
            }
            PolicyError::Zero { field, value } => write!(
                f,
                "{}: `{value}` is zero, and a job with none could not run",
                field.name()
            ),
            PolicyError::TooLarge { field, value } => {
                write!(f, "{}: `{value}` is too large", field.name())
            }
            PolicyError::JobMemoryBelowProcessMemory { job, process } => write!(
                f,
                "jobMemory: {job} bytes is less than processMemory ({process} bytes), \
                 so no process could ever reach its own limit"
            ),
        }
    }
}

impl std::error::Error for PolicyError {}

impl JobPolicy {
    /// A policy with no limit but those every job carries (kill on close, die on crash).
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits each process to `quantity` of committed memory (`64Mi`, `1Gi`).
    pub fn process_memory(mut self, quantity: &str) -> Result<Self, PolicyError> {
        let bytes = memory_bytes(Field::ProcessMemory, quantity)?;
        self.process_memory = Some(bytes);
        self.check_memory()?;
        Ok(self)
    }

    /// Limits all processes of the job together to `quantity` of committed memory.
    pub fn job_memory(mut self, quantity: &str) -> Result<Self, PolicyError> {
        let bytes = memory_bytes(Field::JobMemory, quantity)?;
        self.job_memory = Some(bytes);
        self.check_memory()?;
        Ok(self)
    }

    /// Limits the job to `count` processes at once; creating one more fails.
    pub fn active_processes(mut self, count: u32) -> Result<Self, PolicyError> {
        if count == 0 {
            return Err(PolicyError::Zero {
                field: Field::ActiveProcesses,
                value: count.to_string(),
            });
        }
        self.active_processes = Some(count);
        Ok(self)
    }

    /// Caps the job's CPU at `quantity` (`500m`, `2`). More than the node has is accepted
    /// here and clamped to the whole machine by [`JobPolicy::limits`]: the same spec runs
    /// on nodes of different sizes, and only the node knows its size.
    pub fn cpu(mut self, quantity: &str) -> Result<Self, PolicyError> {
        self.cpu_millis = Some(cpu_millis(quantity)?);
        Ok(self)
    }

    fn check_memory(&self) -> Result<(), PolicyError> {
        match (self.job_memory, self.process_memory) {
            (Some(job), Some(process)) if job < process => {
                Err(PolicyError::JobMemoryBelowProcessMemory { job, process })
            }
            _ => Ok(()),
        }
    }

    /// The raw values a job takes on a node with `logical_processors` processors (all
    /// processor groups; `0` is read as `1`).
    pub fn limits(&self, logical_processors: u32) -> JobLimits {
        let mut limit_flags = ALWAYS;
        if self.process_memory.is_some() {
            limit_flags |= JOB_OBJECT_LIMIT_PROCESS_MEMORY;
        }
        if self.job_memory.is_some() {
            limit_flags |= JOB_OBJECT_LIMIT_JOB_MEMORY;
        }
        if self.active_processes.is_some() {
            limit_flags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS;
        }
        JobLimits {
            extended: ExtendedLimits {
                limit_flags,
                process_memory_limit: self.process_memory.map_or(0, saturating_usize),
                job_memory_limit: self.job_memory.map_or(0, saturating_usize),
                active_process_limit: self.active_processes.unwrap_or(0),
            },
            cpu_rate: self.cpu_millis.map(|millis| CpuRateLimit {
                control_flags: JOB_OBJECT_CPU_RATE_CONTROL_ENABLE
                    | JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP,
                cpu_rate: cpu_rate(millis, logical_processors),
            }),
            ui_restrictions: UI_RESTRICTIONS,
        }
    }
}

/// Exactly what goes into the three information classes of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobLimits {
    /// `JOBOBJECT_EXTENDED_LIMIT_INFORMATION`.
    pub extended: ExtendedLimits,
    /// `JOBOBJECT_CPU_RATE_CONTROL_INFORMATION`; `None` leaves CPU uncapped.
    pub cpu_rate: Option<CpuRateLimit>,
    /// `JOBOBJECT_BASIC_UI_RESTRICTIONS.UIRestrictionsClass`.
    pub ui_restrictions: u32,
}

/// The fields of `JOBOBJECT_EXTENDED_LIMIT_INFORMATION` a cell's job sets; every other
/// field is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtendedLimits {
    /// `BasicLimitInformation.LimitFlags`.
    pub limit_flags: u32,
    /// `ProcessMemoryLimit`, bytes (0 when unset).
    pub process_memory_limit: usize,
    /// `JobMemoryLimit`, bytes (0 when unset).
    pub job_memory_limit: usize,
    /// `BasicLimitInformation.ActiveProcessLimit` (0 when unset).
    pub active_process_limit: u32,
}

/// `JOBOBJECT_CPU_RATE_CONTROL_INFORMATION`, with `CpuRate` as its union member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuRateLimit {
    pub control_flags: u32,
    /// Cycles per 10,000 of all processors together, 1 to 10,000.
    pub cpu_rate: u32,
}

/// `millis` millicores as cycles per 10,000 of a machine with `logical_processors`:
/// `millis / (processors × 1000) × 10000`, rounded down so the cap never grants more than
/// the spec asked for (kubelet computes the Windows CPU maximum the same way), then kept
/// between 1 (Windows refuses 0) and 10,000 (all of the machine; asking for more CPUs than
/// the node has gets the whole node).
pub fn cpu_rate(millis: u32, logical_processors: u32) -> u32 {
    let processors = u64::from(logical_processors.max(1));
    let rate = u64::from(millis) * 10 / processors;
    // The clamp makes the value fit in u32.
    rate.clamp(1, u64::from(CPU_RATE_FULL_MACHINE)) as u32
}

/// Job Objects take sizes in `usize`; a 32-bit Windows cannot hold more than that anyway.
fn saturating_usize(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Bytes in a memory quantity, not negative and not zero.
fn memory_bytes(field: Field, text: &str) -> Result<u64, PolicyError> {
    let number = unsigned(field, text)?;
    let bytes = quantity::memory_bytes(number).map_err(|fault| fault_error(fault, field, text))?;
    nonzero(field, text, bytes)
}

/// Millicores in a CPU quantity, not negative, not zero, and within a `u32`.
fn cpu_millis(text: &str) -> Result<u32, PolicyError> {
    let field = Field::Cpu;
    let number = unsigned(field, text)?;
    let millis = quantity::cpu_millis(number).map_err(|fault| fault_error(fault, field, text))?;
    let millis = nonzero(field, text, millis)?;
    u32::try_from(millis).map_err(|_| PolicyError::TooLarge {
        field,
        value: text.to_owned(),
    })
}

/// `text` without a leading `-`, which is refused as negative rather than unparsable.
fn unsigned(field: Field, text: &str) -> Result<&str, PolicyError> {
    match text.strip_prefix('-') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            Err(PolicyError::Negative {
                field,
                value: text.to_owned(),
            })
        }
        Some(_) => Err(unparsable(field, text)),
        None => Ok(text),
    }
}

fn nonzero(field: Field, text: &str, value: u64) -> Result<u64, PolicyError> {
    if value == 0 {
        Err(PolicyError::Zero {
            field,
            value: text.to_owned(),
        })
    } else {
        Ok(value)
    }
}

fn unparsable(field: Field, text: &str) -> PolicyError {
    PolicyError::Unparsable {
        field,
        value: text.to_owned(),
    }
}

fn fault_error(fault: QuantityFault, field: Field, text: &str) -> PolicyError {
    match fault {
        QuantityFault::Malformed => unparsable(field, text),
        QuantityFault::Overflow => PolicyError::TooLarge {
            field,
            value: text.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities_become_exact_byte_counts() {
        let cases: &[(&str, u64)] = &[
            ("64Mi", 64 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("1Ki", 1024),
            ("2Ti", 2 << 40),
            ("65536", 65_536),
            ("1", 1),
            ("2k", 2_000),
            ("1M", 1_000_000),
            ("1.5G", 1_500_000_000),
            ("3T", 3_000_000_000_000),
            ("0064Mi", 64 << 20),
            // A fraction of a byte is a whole byte, as Kubernetes rounds.
            ("0.5", 1),
            ("1.0001k", 1_001),
            ("0.1Ki", 103),
            ("0.00000000000000000000001", 1),
            ("16383.99999999999999999Ti", 16_384 << 40),
            ("16777215Ti", 16_777_215 << 40),
        ];
        for (text, bytes) in cases {
            let policy = JobPolicy::new().process_memory(text);
            assert_eq!(policy.map(|p| p.process_memory), Ok(Some(*bytes)), "{text}");
        }
    }

    #[test]
    fn cpu_quantities_become_millicores() {
        let cases: &[(&str, u32)] = &[
            ("500m", 500),
            ("1m", 1),
            ("2", 2_000),
            ("0.25", 250),
            ("1.125", 1_125),
            ("0.001", 1),
            ("64", 64_000),
            ("4294967295m", u32::MAX),
            ("4294967.295", u32::MAX),
        ];
        for (text, millis) in cases {
            let policy = JobPolicy::new().cpu(text);
            assert_eq!(policy.map(|p| p.cpu_millis), Ok(Some(*millis)), "{text}");
        }
    }

    /// The kind of an error, its field and the value it quotes, for compact tables.
    fn parts(error: &PolicyError) -> (&'static str, Field, &str) {
        match error {
            PolicyError::Unparsable { field, value } => ("unparsable", *field, value),
            PolicyError::Negative { field, value } => ("negative", *field, value),
            PolicyError::Zero { field, value } => ("zero", *field, value),
            PolicyError::TooLarge { field, value } => ("too large", *field, value),
            PolicyError::JobMemoryBelowProcessMemory { .. } => ("below", Field::JobMemory, ""),
        }
    }

    #[test]
    fn bad_memory_is_refused_naming_the_field_and_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "unparsable"),
            ("Mi", "unparsable"),
            ("64MB", "unparsable"),
            ("64mi", "unparsable"),
            ("500m", "unparsable"),
            ("1e6", "unparsable"),
            (" 64Mi", "unparsable"),
            ("64Mi ", "unparsable"),
            ("+64Mi", "unparsable"),
            ("1.", "unparsable"),
            (".5Gi", "unparsable"),
            ("1.2.3", "unparsable"),
            ("-", "unparsable"),
            ("-Mi", "unparsable"),
            ("--1", "unparsable"),
            ("-1Mi", "negative"),
            ("-0.5", "negative"),
            ("0", "zero"),
            ("0Mi", "zero"),
            ("0.0Gi", "zero"),
            ("18446744073709551616", "too large"),
            ("16777216Ti", "too large"),
            ("99999999999999999999Ti", "too large"),
        ];
        for &(text, kind) in cases {
            for field in [Field::ProcessMemory, Field::JobMemory] {
                let result = match field {
                    Field::ProcessMemory => JobPolicy::new().process_memory(text),
                    _ => JobPolicy::new().job_memory(text),
                };
                let error = result.expect_err(text);
                assert_eq!(parts(&error), (kind, field, text), "{text:?}");
            }
        }
    }

    #[test]
    fn bad_cpu_is_refused_naming_the_field_and_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "unparsable"),
            ("m", "unparsable"),
            ("lots", "unparsable"),
            ("1.5m", "unparsable"),
            ("0.0001", "unparsable"),
            ("500M", "unparsable"),
            ("2Ki", "unparsable"),
            ("1e3m", "unparsable"),
            ("-500m", "negative"),
            ("-2", "negative"),
            ("0", "zero"),
            ("0m", "zero"),
            ("0.000", "zero"),
            ("4294967296m", "too large"),
            ("4294968", "too large"),
            ("99999999999999999999", "too large"),
        ];
        for &(text, kind) in cases {
            let error = JobPolicy::new().cpu(text).expect_err(text);
            assert_eq!(parts(&error), (kind, Field::Cpu, text), "{text:?}");
        }
    }

    #[test]
    fn zero_active_processes_and_a_job_smaller_than_its_process_are_refused() {
        assert_eq!(
            JobPolicy::new().active_processes(0),
            Err(PolicyError::Zero {
                field: Field::ActiveProcesses,
                value: "0".into()
            })
        );
        let error = JobPolicy::new()
            .process_memory("128Mi")
            .and_then(|p| p.job_memory("64Mi"))
            .unwrap_err();
        assert_eq!(
            error,
            PolicyError::JobMemoryBelowProcessMemory {
                job: 64 << 20,
                process: 128 << 20
            }
        );
        assert_eq!(error.field(), Field::JobMemory);
        // Either order of setting them is checked.
        assert!(JobPolicy::new()
            .job_memory("64Mi")
            .and_then(|p| p.process_memory("128Mi"))
            .is_err());
        // Equal is fine: one process may use the whole job.
        assert!(JobPolicy::new()
            .job_memory("64Mi")
            .and_then(|p| p.process_memory("64Mi"))
            .is_ok());
    }

    #[test]
    fn error_messages_name_the_field_and_say_what_was_expected() {
        let cases: Vec<(Result<JobPolicy, PolicyError>, &str)> = vec![
            (
                JobPolicy::new().process_memory("64MB"),
                "processMemory: `64MB` is not a memory quantity such as 64Mi, 1Gi, 1.5G or 65536",
            ),
            (
                JobPolicy::new().cpu("fast"),
                "cpu: `fast` is not a CPU quantity such as 500m, 2 or 0.25",
            ),
            (JobPolicy::new().cpu("-1"), "cpu: `-1` is negative"),
            (
                JobPolicy::new().job_memory("0Gi"),
                "jobMemory: `0Gi` is zero, and a job with none could not run",
            ),
            (
                JobPolicy::new().active_processes(0),
                "activeProcesses: `0` is zero, and a job with none could not run",
            ),
            (
                JobPolicy::new().cpu("5000000"),
                "cpu: `5000000` is too large",
            ),
            (
                JobPolicy::new()
                    .process_memory("2Ki")
                    .and_then(|p| p.job_memory("1Ki")),
                "jobMemory: 1024 bytes is less than processMemory (2048 bytes), \
                 so no process could ever reach its own limit",
            ),
        ];
        for (result, message) in cases {
            assert_eq!(result.unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn cpu_rate_is_the_share_of_all_processors_in_cycles_per_ten_thousand() {
        // (millicores, logical processors, CpuRate)
        let cases: &[(u32, u32, u32)] = &[
            (1_000, 1, 10_000),
            (500, 1, 5_000),
            (500, 2, 2_500),
            (250, 4, 625),
            (500, 64, 78),     // 78.125: rounded down
            (1_000, 3, 3_333), // 3333.33…
            (2_000, 3, 6_666), // 6666.67…: down, never more than asked
            (7, 3, 23),        // 23.33…
            (1, 1, 10),
            (1, 10, 1), // exactly one cycle in 10,000
            (1, 11, 1), // 0.909…: below one is raised to the least Windows takes
            (1, 16, 1), // 0.625
            (1, 2_048, 1),
            (0, 4, 1), // not reachable through the parser, still never 0
            (2_000, 2, 10_000),
            (1_999, 2, 9_995),
            (2_001, 2, 10_000), // more than the node has: the whole node
            (4_000, 2, 10_000),
            (u32::MAX, 1, 10_000), // no overflow on the way
            (u32::MAX, u32::MAX, 10),
            (64_000, 64, 10_000),
            (63_999, 64, 9_999), // 9999.84…
        ];
        for &(millis, processors, rate) in cases {
            assert_eq!(
                cpu_rate(millis, processors),
                rate,
                "{millis}m on {processors} processors"
            );
        }
    }

    #[test]
    fn zero_logical_processors_is_read_as_one() {
        assert_eq!(cpu_rate(500, 0), cpu_rate(500, 1));
    }

    #[test]
    fn limits_carry_exactly_the_flags_of_the_limits_that_are_set() {
        let always =
            JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION;
        assert_eq!(always, 0x2400);
        let cases: Vec<(JobPolicy, u32)> = vec![
            (JobPolicy::new(), always),
            (
                JobPolicy::new().process_memory("64Mi").unwrap(),
                always | JOB_OBJECT_LIMIT_PROCESS_MEMORY,
            ),
            (
                JobPolicy::new().job_memory("1Gi").unwrap(),
                always | JOB_OBJECT_LIMIT_JOB_MEMORY,
            ),
            (
                JobPolicy::new().active_processes(4).unwrap(),
                always | JOB_OBJECT_LIMIT_ACTIVE_PROCESS,
            ),
            // CPU is a separate information class, not a limit flag.
            (JobPolicy::new().cpu("500m").unwrap(), always),
            (
                JobPolicy::new()
                    .process_memory("64Mi")
                    .and_then(|p| p.job_memory("256Mi"))
                    .and_then(|p| p.active_processes(8))
                    .and_then(|p| p.cpu("2"))
                    .unwrap(),
                0x2400 | 0x100 | 0x200 | 0x8,
            ),
        ];
        for (policy, flags) in cases {
            let limits = policy.limits(4);
            assert_eq!(limits.extended.limit_flags, flags, "{policy:?}");
            assert_eq!(limits.ui_restrictions, 0xff, "{policy:?}");
        }
    }

    #[test]
    fn limits_carry_the_raw_values() {
        let policy = JobPolicy::new()
            .process_memory("64Mi")
            .and_then(|p| p.job_memory("256Mi"))
            .and_then(|p| p.active_processes(8))
            .and_then(|p| p.cpu("500m"))
            .unwrap();
        assert_eq!(
            policy.limits(8),
            JobLimits {
                extended: ExtendedLimits {
                    limit_flags: 0x2400 | 0x100 | 0x200 | 0x8,
                    process_memory_limit: 67_108_864,
                    job_memory_limit: 268_435_456,
                    active_process_limit: 8,
                },
                cpu_rate: Some(CpuRateLimit {
                    control_flags: 0x1 | 0x4,
                    cpu_rate: 625,
                }),
                ui_restrictions: 0xff,
            }
        );
        assert_eq!(
            JobPolicy::new().limits(8),
            JobLimits {
                extended: ExtendedLimits {
                    limit_flags: 0x2400,
                    process_memory_limit: 0,
                    job_memory_limit: 0,
                    active_process_limit: 0,
                },
                cpu_rate: None,
                ui_restrictions: 0xff,
            }
        );
    }

    #[test]
    fn flag_constants_have_their_documented_values() {
        // winnt.h; job.rs checks the same against windows-sys when built for Windows.
        let cases: &[(u32, u32)] = &[
            (JOB_OBJECT_LIMIT_ACTIVE_PROCESS, 0x8),
            (JOB_OBJECT_LIMIT_PROCESS_MEMORY, 0x100),
            (JOB_OBJECT_LIMIT_JOB_MEMORY, 0x200),
            (JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION, 0x400),
            (JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, 0x2000),
            (JOB_OBJECT_CPU_RATE_CONTROL_ENABLE, 0x1),
            (JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP, 0x4),
            (JOB_OBJECT_UILIMIT_HANDLES, 0x1),
            (JOB_OBJECT_UILIMIT_READCLIPBOARD, 0x2),
            (JOB_OBJECT_UILIMIT_WRITECLIPBOARD, 0x4),
            (JOB_OBJECT_UILIMIT_SYSTEMPARAMETERS, 0x8),
            (JOB_OBJECT_UILIMIT_DISPLAYSETTINGS, 0x10),
            (JOB_OBJECT_UILIMIT_GLOBALATOMS, 0x20),
            (JOB_OBJECT_UILIMIT_DESKTOP, 0x40),
            (JOB_OBJECT_UILIMIT_EXITWINDOWS, 0x80),
        ];
        for (i, &(constant, value)) in cases.iter().enumerate() {
            assert_eq!(constant, value, "row {i}");
        }
    }
}
