//! The Windows system calls: an anonymous Job Object holding a [`JobLimits`], processes
//! started suspended and assigned to it before they run, and handles closed on drop. The one
//! module with `unsafe`; each call says why it is sound where it is made.

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::mem::{size_of, zeroed};
use std::path::Path;
use std::ptr::{null, null_mut};
use std::time::Duration;

use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, SetHandleInformation, BOOL, FALSE, HANDLE, HANDLE_FLAG_INHERIT,
    INVALID_HANDLE_VALUE, TRUE, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::System::Console::{
    GetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
};
use windows_sys::Win32::System::JobObjects as jo;
use windows_sys::Win32::System::Threading as th;

use crate::appcontainer::{token_of, wide_path, AppContainer, AttributeList, TokenFacts};
use crate::cmdline::{self, CommandLineError};
use crate::policy::{self, CpuRateLimit, ExtendedLimits, JobLimits};

// The neutral module's constants are the ones Windows reads.
const _: () =
    assert!(policy::JOB_OBJECT_LIMIT_ACTIVE_PROCESS == jo::JOB_OBJECT_LIMIT_ACTIVE_PROCESS);
const _: () =
    assert!(policy::JOB_OBJECT_LIMIT_PROCESS_MEMORY == jo::JOB_OBJECT_LIMIT_PROCESS_MEMORY);
const _: () = assert!(policy::JOB_OBJECT_LIMIT_JOB_MEMORY == jo::JOB_OBJECT_LIMIT_JOB_MEMORY);
const _: () = assert!(
    policy::JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
        == jo::JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
);
const _: () =
    assert!(policy::JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE == jo::JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE);
const _: () =
    assert!(policy::JOB_OBJECT_CPU_RATE_CONTROL_ENABLE == jo::JOB_OBJECT_CPU_RATE_CONTROL_ENABLE);
const _: () = assert!(
    policy::JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP == jo::JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP
);
const _: () = assert!(policy::JOB_OBJECT_UILIMIT_HANDLES == jo::JOB_OBJECT_UILIMIT_HANDLES);
const _: () =
    assert!(policy::JOB_OBJECT_UILIMIT_READCLIPBOARD == jo::JOB_OBJECT_UILIMIT_READCLIPBOARD);
const _: () =
    assert!(policy::JOB_OBJECT_UILIMIT_WRITECLIPBOARD == jo::JOB_OBJECT_UILIMIT_WRITECLIPBOARD);
const _: () =
    assert!(policy::JOB_OBJECT_UILIMIT_SYSTEMPARAMETERS == jo::JOB_OBJECT_UILIMIT_SYSTEMPARAMETERS);
const _: () =
    assert!(policy::JOB_OBJECT_UILIMIT_DISPLAYSETTINGS == jo::JOB_OBJECT_UILIMIT_DISPLAYSETTINGS);
const _: () = assert!(policy::JOB_OBJECT_UILIMIT_GLOBALATOMS == jo::JOB_OBJECT_UILIMIT_GLOBALATOMS);
const _: () = assert!(policy::JOB_OBJECT_UILIMIT_DESKTOP == jo::JOB_OBJECT_UILIMIT_DESKTOP);
const _: () = assert!(policy::JOB_OBJECT_UILIMIT_EXITWINDOWS == jo::JOB_OBJECT_UILIMIT_EXITWINDOWS);

/// A job information class this crate sets or reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InfoClass {
    ExtendedLimits,
    UiRestrictions,
    CpuRate,
    Accounting,
}

impl InfoClass {
    fn raw(self) -> jo::JOBOBJECTINFOCLASS {
        match self {
            InfoClass::ExtendedLimits => jo::JobObjectExtendedLimitInformation,
            InfoClass::UiRestrictions => jo::JobObjectBasicUIRestrictions,
            InfoClass::CpuRate => jo::JobObjectCpuRateControlInformation,
            InfoClass::Accounting => jo::JobObjectBasicAccountingInformation,
        }
    }

    fn name(self) -> &'static str {
        match self {
            InfoClass::ExtendedLimits => "JobObjectExtendedLimitInformation",
            InfoClass::UiRestrictions => "JobObjectBasicUIRestrictions",
            InfoClass::CpuRate => "JobObjectCpuRateControlInformation",
            InfoClass::Accounting => "JobObjectBasicAccountingInformation",
        }
    }
}

/// A failed system call, with the `GetLastError` code it left.
#[derive(Debug)]
pub enum JobError {
    CreateJob {
        code: u32,
    },
    SetInformation {
        class: InfoClass,
        code: u32,
    },
    QueryInformation {
        class: InfoClass,
        code: u32,
    },
    CommandLine(CommandLineError),
    CreateProcess {
        program: String,
        code: u32,
    },
    AssignProcess {
        pid: u32,
        code: u32,
    },
    ResumeThread {
        pid: u32,
        code: u32,
    },
    IsProcessInJob {
        code: u32,
    },
    Terminate {
        code: u32,
    },
    Wait {
        pid: u32,
        code: u32,
    },
    ExitCode {
        pid: u32,
        code: u32,
    },
    ProcessorCount {
        code: u32,
    },
    OpenProcess {
        pid: u32,
        code: u32,
    },
    AttributeList {
        code: u32,
    },
    /// A cell's process whose token is not an AppContainer's: never resumed.
    NotContained {
        pid: u32,
        token: Result<TokenFacts, String>,
    },
}

impl JobError {
    /// The `GetLastError` code (`None` for a command line refused before any call).
    pub fn code(&self) -> Option<u32> {
        match self {
            JobError::CommandLine(_) | JobError::NotContained { .. } => None,
            JobError::CreateJob { code }
            | JobError::SetInformation { code, .. }
            | JobError::QueryInformation { code, .. }
            | JobError::CreateProcess { code, .. }
            | JobError::AssignProcess { code, .. }
            | JobError::ResumeThread { code, .. }
            | JobError::IsProcessInJob { code }
            | JobError::Terminate { code }
            | JobError::Wait { code, .. }
            | JobError::ExitCode { code, .. }
            | JobError::ProcessorCount { code }
            | JobError::OpenProcess { code, .. }
            | JobError::AttributeList { code } => Some(*code),
        }
    }

    /// A short fixed name of the failed operation, for a failure counter's label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            JobError::CreateJob { .. } => "create_job",
            JobError::SetInformation { .. } => "set_information",
            JobError::QueryInformation { .. } => "query_information",
            JobError::CommandLine(_) => "command_line",
            JobError::CreateProcess { .. } => "create_process",
            JobError::AssignProcess { .. } => "assign_process",
            JobError::ResumeThread { .. } => "resume_thread",
            JobError::IsProcessInJob { .. } => "is_process_in_job",
            JobError::Terminate { .. } => "terminate",
            JobError::Wait { .. } => "wait",
            JobError::ExitCode { .. } => "exit_code",
            JobError::ProcessorCount { .. } => "processor_count",
            JobError::OpenProcess { .. } => "open_process",
            JobError::AttributeList { .. } => "attribute_list",
            JobError::NotContained { .. } => "not_contained",
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::CreateJob { .. } => write!(f, "creating a job object")?,
            JobError::SetInformation { class, .. } => write!(f, "setting {}", class.name())?,
            JobError::QueryInformation { class, .. } => write!(f, "reading {}", class.name())?,
            JobError::CommandLine(error) => return write!(f, "building the command line: {error}"),
            JobError::CreateProcess { program, .. } => write!(f, "starting `{program}`")?,
            JobError::AssignProcess { pid, .. } => write!(f, "assigning process {pid} to the job")?,
            JobError::ResumeThread { pid, .. } => write!(f, "resuming process {pid}")?,
            JobError::IsProcessInJob { .. } => write!(f, "asking whether a process is in the job")?,
            JobError::Terminate { .. } => write!(f, "terminating the job")?,
            JobError::Wait { pid, .. } => write!(f, "waiting for process {pid}")?,
            JobError::ExitCode { pid, .. } => write!(f, "reading the exit code of process {pid}")?,
            JobError::ProcessorCount { .. } => write!(f, "counting logical processors")?,
            JobError::OpenProcess { pid, .. } => write!(f, "opening process {pid}")?,
            JobError::AttributeList { .. } => {
                write!(f, "building the AppContainer's process attribute")?
            }
            JobError::NotContained { pid, token } => {
                return match token {
                    Ok(facts) => write!(
                        f,
                        "process {pid} was made outside its AppContainer ({facts:?}) and is \
                         ended unrun"
                    ),
                    Err(error) => write!(
                        f,
                        "process {pid}'s token could not be read ({error}); it is ended unrun"
                    ),
                };
            }
        }
        if let Some(code) = self.code() {
            // The system's message, then "(os error N)" with the GetLastError code.
            write!(f, ": {}", io::Error::from_raw_os_error(code as i32))?;
        }
        Ok(())
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JobError::CommandLine(error) => Some(error),
            _ => None,
        }
    }
}

fn last_error() -> u32 {
    // SAFETY: reads the calling thread's last-error value; no arguments.
    unsafe { GetLastError() }
}

/// A kernel handle, closed when dropped.
struct Handle(HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle was returned open by the call that made it and is closed only
        // here, once. A failure leaves nothing to do.
        unsafe { CloseHandle(self.0) };
    }
}

// SAFETY: a kernel handle is a process-wide value; every call made through these types is
// safe from any thread, and none keeps state beside the handle.
unsafe impl Send for Handle {}
// SAFETY: as above; `&Handle` only ever passes the value to thread-safe system calls.
unsafe impl Sync for Handle {}

/// An anonymous Job Object. Dropping it closes the last handle, and as every job made by
/// [`JobPolicy::limits`](crate::JobPolicy::limits) carries KILL_ON_JOB_CLOSE, that ends
/// every process still in it.
pub struct Job {
    handle: Handle,
}

/// What a job has run so far (`JOBOBJECT_BASIC_ACCOUNTING_INFORMATION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accounting {
    pub total_user_time: Duration,
    pub total_kernel_time: Duration,
    pub total_processes: u32,
    pub active_processes: u32,
    pub total_terminated_processes: u32,
}

impl Job {
    /// A new job with no name (so no other process can open it) and no limits yet.
    pub fn create() -> Result<Job, JobError> {
        // SAFETY: null security attributes and a null name are both documented as allowed.
        let handle = unsafe { jo::CreateJobObjectW(null(), null()) };
        if handle.is_null() {
            return Err(JobError::CreateJob { code: last_error() });
        }
        Ok(Job {
            handle: Handle(handle),
        })
    }

    /// Sets the extended limits, the UI restrictions, and the CPU rate when `limits` has
    /// one, in that order; the error names the class that failed.
    pub fn set_limits(&self, limits: &JobLimits) -> Result<(), JobError> {
        // SAFETY: the struct is plain integers; all zeros is "no limit" for every field.
        let mut extended: jo::JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { zeroed() };
        let wanted = &limits.extended;
        extended.BasicLimitInformation.LimitFlags = wanted.limit_flags;
        extended.BasicLimitInformation.ActiveProcessLimit = wanted.active_process_limit;
        extended.ProcessMemoryLimit = wanted.process_memory_limit;
        extended.JobMemoryLimit = wanted.job_memory_limit;
        // SAFETY: the class and the struct match (`set_information`'s contract).
        unsafe { self.set_information(InfoClass::ExtendedLimits, &extended)? };

        let ui = jo::JOBOBJECT_BASIC_UI_RESTRICTIONS {
            UIRestrictionsClass: limits.ui_restrictions,
        };
        // SAFETY: the class and the struct match.
        unsafe { self.set_information(InfoClass::UiRestrictions, &ui)? };

        if let Some(CpuRateLimit {
            control_flags,
            cpu_rate,
        }) = limits.cpu_rate
        {
            let cpu = jo::JOBOBJECT_CPU_RATE_CONTROL_INFORMATION {
                ControlFlags: control_flags,
                Anonymous: jo::JOBOBJECT_CPU_RATE_CONTROL_INFORMATION_0 { CpuRate: cpu_rate },
            };
            // SAFETY: the class and the struct match.
            unsafe { self.set_information(InfoClass::CpuRate, &cpu)? };
        }
        Ok(())
    }

    /// The extended limits the job holds, as Windows reports them back.
    pub fn query_extended_limits(&self) -> Result<ExtendedLimits, JobError> {
        // SAFETY: the class and the struct match (`query_information`'s contract).
        let extended: jo::JOBOBJECT_EXTENDED_LIMIT_INFORMATION =
            unsafe { self.query_information(InfoClass::ExtendedLimits)? };
        Ok(ExtendedLimits {
            limit_flags: extended.BasicLimitInformation.LimitFlags,
            process_memory_limit: extended.ProcessMemoryLimit,
            job_memory_limit: extended.JobMemoryLimit,
            active_process_limit: extended.BasicLimitInformation.ActiveProcessLimit,
        })
    }

    /// The UI restrictions the job holds.
    pub fn query_ui_restrictions(&self) -> Result<u32, JobError> {
        // SAFETY: the class and the struct match.
        let ui: jo::JOBOBJECT_BASIC_UI_RESTRICTIONS =
            unsafe { self.query_information(InfoClass::UiRestrictions)? };
        Ok(ui.UIRestrictionsClass)
    }

    /// The CPU rate the job holds, `None` when rate control is off.
    pub fn query_cpu_rate(&self) -> Result<Option<CpuRateLimit>, JobError> {
        // SAFETY: the class and the struct match.
        let rate: jo::JOBOBJECT_CPU_RATE_CONTROL_INFORMATION =
            unsafe { self.query_information(InfoClass::CpuRate)? };
        if rate.ControlFlags & jo::JOB_OBJECT_CPU_RATE_CONTROL_ENABLE == 0 {
            return Ok(None);
        }
        Ok(Some(CpuRateLimit {
            control_flags: rate.ControlFlags,
            // SAFETY: a u32 over initialised bytes whichever member Windows wrote; with
            // neither WEIGHT_BASED nor MIN_MAX_RATE set it is CpuRate.
            cpu_rate: unsafe { rate.Anonymous.CpuRate },
        }))
    }

    /// Starts `program` (a path, not searched for on `PATH`) with `args` inside the job:
    /// created suspended, assigned, then resumed, so it runs no instruction outside the
    /// job, and neither does any process it starts. It does not inherit the caller's
    /// handles or error mode.
    pub fn spawn<S: AsRef<str>>(&self, program: &str, args: &[S]) -> Result<Process, JobError> {
        self.create_process(program, args, false, None)
    }

    /// [`Job::spawn`], with the caller's standard input, output and error handed to the
    /// process (and no other handle): how `cellbus-sandbox` passes the runtime's pipes on.
    pub fn spawn_with_standard_handles<S: AsRef<str>>(
        &self,
        program: &str,
        args: &[S],
    ) -> Result<Process, JobError> {
        self.create_process(program, args, true, None)
    }

    /// [`Job::spawn_with_standard_handles`], in `cell.container` (its token holds the
    /// AppContainer's SID and capabilities, at low integrity), with `cell.environment`
    /// as its whole environment and `cell.directory` as its working directory: how
    /// `cellbus-sandbox` starts a cell.
    pub fn spawn_cell<S: AsRef<str>>(
        &self,
        program: &str,
        args: &[S],
        cell: &CellStart<'_>,
    ) -> Result<Process, JobError> {
        self.create_process(program, args, true, Some(cell))
    }

    fn create_process<S: AsRef<str>>(
        &self,
        program: &str,
        args: &[S],
        standard_handles: bool,
        cell: Option<&CellStart<'_>>,
    ) -> Result<Process, JobError> {
        let line = cmdline::command_line(program, args).map_err(JobError::CommandLine)?;
        let application = wide(program);
        // CreateProcessW may write into the command line, so it gets a buffer of its own.
        let mut line = wide(&line);
        // SAFETY: plain integers and null pointers; `cb` is set below as documented.
        let mut extended: th::STARTUPINFOEXW = unsafe { zeroed() };
        let startup = &mut extended.StartupInfo;
        startup.cb = size_of::<th::STARTUPINFOW>() as u32;
        let mut inherit = FALSE;
        if standard_handles {
            for (which, slot) in [
                (STD_INPUT_HANDLE, &mut startup.hStdInput),
                (STD_OUTPUT_HANDLE, &mut startup.hStdOutput),
                (STD_ERROR_HANDLE, &mut startup.hStdError),
            ] {
                // SAFETY: GetStdHandle takes one of the three documented constants.
                let handle = unsafe { GetStdHandle(which) };
                if !handle.is_null() && handle != INVALID_HANDLE_VALUE {
                    // Inheritable, or the child could not use it. The handles were made
                    // for this process by its parent, which keeps its own ends.
                    // SAFETY: an open handle of this process; flag values as documented.
                    unsafe {
                        SetHandleInformation(handle, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT)
                    };
                }
                *slot = handle;
            }
            startup.dwFlags |= th::STARTF_USESTDHANDLES;
            // Every other handle of a cell's sandbox is made non-inheritable (the job's is
            // by default), so these three are all the process gets.
            inherit = TRUE;
        }
        let mut flags = th::CREATE_SUSPENDED | th::CREATE_DEFAULT_ERROR_MODE;
        let mut environment: *const c_void = null();
        let mut directory: Option<Vec<u16>> = None;
        // Declared here so both outlive CreateProcessW, which reads what the list points to.
        let capabilities = cell.map(|cell| cell.container.security_capabilities());
        let mut attributes = None;
        if let (Some(cell), Some(capabilities)) = (cell, &capabilities) {
            let list = attributes.insert(
                AttributeList::security_capabilities(capabilities)
                    .map_err(|code| JobError::AttributeList { code })?,
            );
            extended.lpAttributeList = list.raw();
            extended.StartupInfo.cb = size_of::<th::STARTUPINFOEXW>() as u32;
            flags |= th::EXTENDED_STARTUPINFO_PRESENT | th::CREATE_UNICODE_ENVIRONMENT;
            environment = cell.environment.as_ptr() as *const c_void;
            directory = Some(wide_path(cell.directory));
        }
        // SAFETY: as above; filled in by CreateProcessW.
        let mut info: th::PROCESS_INFORMATION = unsafe { zeroed() };
        // SAFETY: both strings are NUL-terminated UTF-16 that outlive the call, the line
        // buffer is mutable, the environment is a block `environment_block` made (or null:
        // the caller's), the directory NUL-terminated (or null: the caller's), and
        // `extended`/`info` are valid structs, `extended.cb` saying which one it is.
        let created = unsafe {
            th::CreateProcessW(
                application.as_ptr(),
                line.as_mut_ptr(),
                null(),
                null(),
                inherit,
                flags,
                environment,
                directory.as_ref().map_or(null(), |d| d.as_ptr()),
                &extended as *const th::STARTUPINFOEXW as *const th::STARTUPINFOW,
                &mut info,
            )
        };
        drop(attributes);
        if created == 0 {
            return Err(JobError::CreateProcess {
                program: program.to_owned(),
                code: last_error(),
            });
        }
        let process = Process {
            handle: Handle(info.hProcess),
            id: info.dwProcessId,
        };
        let thread = Handle(info.hThread);

        if cell.is_some() {
            // Windows may take the attribute and still not apply it (Wine refuses it today;
            // a later one might ignore it): the token says what the process really is.
            match token_of(process.handle.0) {
                Ok(facts) if facts.app_container => {}
                token => {
                    process.kill();
                    return Err(JobError::NotContained {
                        pid: process.id,
                        token: token.map_err(|e| e.to_string()),
                    });
                }
            }
        }

        // SAFETY: both handles are open; the job's has JOB_OBJECT_ALL_ACCESS, the process's
        // PROCESS_ALL_ACCESS, as their creators return them.
        if unsafe { jo::AssignProcessToJobObject(self.handle.0, process.handle.0) } == 0 {
            let code = last_error();
            // It never ran; a suspended process left behind would live forever.
            process.kill();
            return Err(JobError::AssignProcess {
                pid: process.id,
                code,
            });
        }
        // SAFETY: the primary thread's handle, open, with THREAD_SUSPEND_RESUME access.
        if unsafe { th::ResumeThread(thread.0) } == u32::MAX {
            let code = last_error();
            process.kill();
            return Err(JobError::ResumeThread {
                pid: process.id,
                code,
            });
        }
        Ok(process)
    }

    /// Ends every process in the job with `exit_code`.
    pub fn terminate(&self, exit_code: u32) -> Result<(), JobError> {
        // SAFETY: the job handle is open with JOB_OBJECT_TERMINATE.
        if unsafe { jo::TerminateJobObject(self.handle.0, exit_code) } == 0 {
            return Err(JobError::Terminate { code: last_error() });
        }
        Ok(())
    }

    /// Whether `process` is in this job.
    pub fn contains(&self, process: &Process) -> Result<bool, JobError> {
        self.holds(process.handle.0)
    }

    /// Whether the calling process is in this job (a runtime never should be: it would
    /// share the cell's limits and die with it).
    pub fn contains_current_process(&self) -> Result<bool, JobError> {
        // SAFETY: a pseudo-handle, always valid, never closed.
        self.holds(unsafe { th::GetCurrentProcess() })
    }

    fn holds(&self, process: HANDLE) -> Result<bool, JobError> {
        let mut result: BOOL = FALSE;
        // SAFETY: both handles are open, `result` is a valid out pointer.
        if unsafe { jo::IsProcessInJob(process, self.handle.0, &mut result) } == 0 {
            return Err(JobError::IsProcessInJob { code: last_error() });
        }
        Ok(result != 0)
    }

    /// What the job has run so far.
    pub fn accounting(&self) -> Result<Accounting, JobError> {
        // SAFETY: the class and the struct match.
        let info: jo::JOBOBJECT_BASIC_ACCOUNTING_INFORMATION =
            unsafe { self.query_information(InfoClass::Accounting)? };
        Ok(Accounting {
            total_user_time: from_100ns(info.TotalUserTime),
            total_kernel_time: from_100ns(info.TotalKernelTime),
            total_processes: info.TotalProcesses,
            active_processes: info.ActiveProcesses,
            total_terminated_processes: info.TotalTerminatedProcesses,
        })
    }

    /// # Safety
    /// `T` must be the struct Windows documents for `class`.
    unsafe fn set_information<T>(&self, class: InfoClass, info: &T) -> Result<(), JobError> {
        let ok = jo::SetInformationJobObject(
            self.handle.0,
            class.raw(),
            info as *const T as *const c_void,
            size_of::<T>() as u32,
        );
        if ok == 0 {
            return Err(JobError::SetInformation {
                class,
                code: last_error(),
            });
        }
        Ok(())
    }

    /// # Safety
    /// `T` must be the struct Windows documents for `class`, valid when all zeros.
    unsafe fn query_information<T>(&self, class: InfoClass) -> Result<T, JobError> {
        let mut info: T = zeroed();
        let ok = jo::QueryInformationJobObject(
            self.handle.0,
            class.raw(),
            &mut info as *mut T as *mut c_void,
            size_of::<T>() as u32,
            null_mut(),
        );
        if ok == 0 {
            return Err(JobError::QueryInformation {
                class,
                code: last_error(),
            });
        }
        Ok(info)
    }
}

/// How a cell's process starts, besides its program and arguments.
pub struct CellStart<'a> {
    pub container: &'a AppContainer,
    /// Its whole environment, as [`environment_block`](crate::environment_block) makes it.
    pub environment: &'a [u16],
    /// Its working directory.
    pub directory: &'a Path,
}

/// Waits for `cell` to end and returns its exit code, then ends whatever it left in `job`:
/// what a cell starts goes with it, as on Linux.
pub fn supervise(job: &Job, cell: &Process) -> Result<u32, JobError> {
    let code = loop {
        if let Some(code) = cell.wait(Duration::from_secs(3600))? {
            break code;
        }
    };
    let _ = job.terminate(code);
    Ok(code)
}

/// A process started by [`Job::spawn`]. Dropping it closes the handle and leaves the
/// process to its job.
pub struct Process {
    handle: Handle,
    id: u32,
}

impl Process {
    /// A process by id, opened only to wait for it and read its exit code.
    pub fn open(pid: u32) -> Result<Process, JobError> {
        // SAFETY: no pointers; the access rights are documented constants.
        let handle = unsafe {
            th::OpenProcess(
                th::PROCESS_SYNCHRONIZE | th::PROCESS_QUERY_LIMITED_INFORMATION,
                FALSE,
                pid,
            )
        };
        if handle.is_null() {
            return Err(JobError::OpenProcess {
                pid,
                code: last_error(),
            });
        }
        Ok(Process {
            handle: Handle(handle),
            id: pid,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Waits up to `timeout` for the process to end: its exit code, or `None` if it is
    /// still running.
    pub fn wait(&self, timeout: Duration) -> Result<Option<u32>, JobError> {
        // Rounded up to whole milliseconds, and kept below INFINITE.
        let millis = (timeout.as_nanos() + 999_999) / 1_000_000;
        let millis = u32::try_from(millis)
            .unwrap_or(u32::MAX)
            .min(th::INFINITE - 1);
        // SAFETY: the process handle is open with SYNCHRONIZE.
        match unsafe { th::WaitForSingleObject(self.handle.0, millis) } {
            WAIT_OBJECT_0 => self.exit_code(),
            WAIT_TIMEOUT => Ok(None),
            WAIT_FAILED => Err(JobError::Wait {
                pid: self.id,
                code: last_error(),
            }),
            other => Err(JobError::Wait {
                pid: self.id,
                code: other,
            }),
        }
    }

    /// The exit code if the process has ended, `None` if it is still running.
    pub fn exit_code(&self) -> Result<Option<u32>, JobError> {
        // STILL_ACTIVE (259) is also a code a process may exit with; the wait tells them
        // apart.
        // SAFETY: the process handle is open with SYNCHRONIZE.
        match unsafe { th::WaitForSingleObject(self.handle.0, 0) } {
            WAIT_OBJECT_0 => {}
            WAIT_TIMEOUT => return Ok(None),
            _ => {
                return Err(JobError::Wait {
                    pid: self.id,
                    code: last_error(),
                })
            }
        }
        let mut code = 0u32;
        // SAFETY: the handle is open with PROCESS_QUERY_INFORMATION; `code` is a valid out
        // pointer.
        if unsafe { th::GetExitCodeProcess(self.handle.0, &mut code) } == 0 {
            return Err(JobError::ExitCode {
                pid: self.id,
                code: last_error(),
            });
        }
        Ok(Some(code))
    }

    /// Ends a process that failed to start properly. Best effort: there is nothing to do if
    /// it fails.
    fn kill(&self) {
        // SAFETY: the process handle is open with PROCESS_TERMINATE.
        unsafe { th::TerminateProcess(self.handle.0, 1) };
    }
}

/// Logical processors in all processor groups: what a job's CPU rate is a share of.
pub fn logical_processors() -> Result<u32, JobError> {
    // SAFETY: no pointers; ALL_PROCESSOR_GROUPS is a documented argument.
    let count = unsafe { th::GetActiveProcessorCount(th::ALL_PROCESSOR_GROUPS) };
    if count == 0 {
        return Err(JobError::ProcessorCount { code: last_error() });
    }
    Ok(count)
}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(std::iter::once(0)).collect()
}

fn from_100ns(ticks: i64) -> Duration {
    let ticks = u64::try_from(ticks).unwrap_or(0);
    Duration::from_nanos(ticks.saturating_mul(100))
}
