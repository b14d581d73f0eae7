//! The limits only a real Windows enforces (Wine accepts or refuses them but does not act
//! on them): process and job memory, the active-process limit, the CPU hard cap, and dying
//! on an unhandled exception. Run by the `windows` job of .github/workflows/ci.yml. Each
//! test fails if its limit is not applied; under Wine every one of them fails.
#![cfg(windows)]

use std::time::{Duration, Instant};

use cellbus_sandbox_windows::{logical_processors, Job, JobError, JobPolicy};

/// The probe binary, whose `child-*` modes are the processes these tests sandbox.
const PROBE: &str = env!("CARGO_BIN_EXE_job-probe");
/// `child-alloc`'s exit code when its allocation was refused (job-probe.rs).
const ALLOCATION_REFUSED: u32 = 3;
/// The exception `child-raise` raises (job-probe.rs).
const RAISED: u32 = 0xE0C0_FFEE;
/// `SEM_NOGPFAULTERRORBOX`, the error mode DIE_ON_UNHANDLED_EXCEPTION forces on a process.
const SEM_NOGPFAULTERRORBOX: u32 = 0x0002;
/// `ERROR_NOT_ENOUGH_QUOTA`, what assigning one process too many fails with.
const ERROR_NOT_ENOUGH_QUOTA: u32 = 1816;
const PATIENCE: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

fn job(policy: JobPolicy) -> Job {
    let job = Job::create().expect("a job");
    let processors = logical_processors().expect("a processor count");
    job.set_limits(&policy.limits(processors))
        .expect("limits set");
    job
}

/// Runs `args` in `job` to the end and returns its exit code.
fn run(job: &Job, args: &[&str]) -> u32 {
    let child = job.spawn(PROBE, args).expect("the probe starts");
    child
        .wait(PATIENCE)
        .expect("waiting")
        .unwrap_or_else(|| panic!("{args:?} did not end within {PATIENCE:?}"))
}

fn alloc(bytes: usize) -> String {
    bytes.to_string()
}

#[test]
fn windows_reads_back_every_limit_as_set() {
    let policy = JobPolicy::new()
        .process_memory("64Mi")
        .and_then(|p| p.job_memory("256Mi"))
        .and_then(|p| p.active_processes(4))
        .and_then(|p| p.cpu("500m"))
        .unwrap();
    let limits = policy.limits(logical_processors().unwrap());
    let job = job(policy);
    assert_eq!(job.query_extended_limits().unwrap(), limits.extended);
    assert_eq!(job.query_ui_restrictions().unwrap(), limits.ui_restrictions);
    assert_eq!(job.query_cpu_rate().unwrap(), limits.cpu_rate);
}

#[test]
fn a_process_cannot_commit_more_than_its_process_memory_limit() {
    let limited = job(JobPolicy::new().process_memory("64Mi").unwrap());
    assert_eq!(
        run(&limited, &["child-alloc", &alloc(16 * MIB)]),
        0,
        "16 MiB fits under 64 MiB"
    );
    assert_eq!(
        run(&limited, &["child-alloc", &alloc(256 * MIB)]),
        ALLOCATION_REFUSED,
        "256 MiB must be refused under a 64 MiB process limit"
    );
    // The same allocation in a job without the limit succeeds: the limit refused it.
    let unlimited = job(JobPolicy::new());
    assert_eq!(run(&unlimited, &["child-alloc", &alloc(256 * MIB)]), 0);
}

#[test]
fn the_job_memory_limit_holds_the_processes_of_the_job_together() {
    let limited = job(JobPolicy::new().job_memory("96Mi").unwrap());
    assert_eq!(run(&limited, &["child-alloc", &alloc(16 * MIB)]), 0);
    assert_eq!(
        run(&limited, &["child-alloc", &alloc(256 * MIB)]),
        ALLOCATION_REFUSED,
        "256 MiB must be refused under a 96 MiB job limit"
    );
}

#[test]
fn a_job_refuses_a_process_past_its_active_process_limit() {
    let limited = job(JobPolicy::new().active_processes(1).unwrap());
    let first = limited
        .spawn(PROBE, &["child-sleep"])
        .expect("the first fits");
    match limited.spawn(PROBE, &["child-sleep"]) {
        Err(JobError::AssignProcess { code, .. }) => {
            assert_eq!(code, ERROR_NOT_ENOUGH_QUOTA, "unexpected error code")
        }
        Err(other) => panic!("expected the assignment to be refused, got {other}"),
        Ok(second) => panic!(
            "a second process ({}) joined a job limited to one",
            second.id()
        ),
    }
    // A process in the job cannot get around the limit by starting its own child:
    // child-spawn-sleep exits 4 when its spawn fails.
    drop(first);
    limited.terminate(0).unwrap();
    let alone = job(JobPolicy::new().active_processes(1).unwrap());
    assert_eq!(run(&alone, &["child-spawn-sleep"]), 4);
}

#[test]
fn a_hard_cpu_cap_holds_a_spinning_process_to_its_share() {
    let processors = logical_processors().unwrap();
    let policy = JobPolicy::new().cpu("250m").unwrap();
    let rate = policy.limits(processors).cpu_rate.unwrap().cpu_rate;
    let capped = job(policy);
    let start = Instant::now();
    assert_eq!(run(&capped, &["child-spin", "3000"]), 0);
    let wall = start.elapsed();
    let accounting = capped.accounting().unwrap();
    let used = accounting.total_user_time + accounting.total_kernel_time;
    // The job may use rate/10,000 of every processor; one spinning thread alone would use
    // all of one processor for the whole wall time.
    let share = f64::from(rate) / 10_000.0 * f64::from(processors);
    let allowed = wall.mul_f64(share);
    assert!(
        used <= allowed.mul_f64(1.5) + Duration::from_millis(200),
        "used {used:?} of CPU in {wall:?}, allowed {allowed:?} (CpuRate {rate} on {processors} processors)"
    );
    assert!(
        used >= allowed / 4,
        "the child barely ran ({used:?}): nothing was measured"
    );
}

#[test]
fn an_unhandled_exception_kills_the_process_without_an_error_box() {
    let sandbox = job(JobPolicy::new());
    // Children do not inherit the caller's error mode (CREATE_DEFAULT_ERROR_MODE), so the
    // mode they report is the job's doing.
    let mode = run(&sandbox, &["child-error-mode"]);
    assert_ne!(
        mode & SEM_NOGPFAULTERRORBOX,
        0,
        "error mode {mode:#x} lacks SEM_NOGPFAULTERRORBOX"
    );
    let start = Instant::now();
    assert_eq!(run(&sandbox, &["child-raise"]), RAISED);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the crash took {:?}",
        start.elapsed()
    );
}

/// `cellbus-sandbox`, started as the runtime starts it for a cell with 64Mi of memory.
#[test]
fn cellbus_sandbox_holds_a_cell_to_its_memory() {
    let sandbox = env!("CARGO_BIN_EXE_cellbus-sandbox");
    let status = |bytes: usize| {
        std::process::Command::new(sandbox)
            .args(["sandbox", "--memory", "67108864", "--processes", "4", "--"])
            .args([PROBE, "child-alloc", &alloc(bytes)])
            .status()
            .expect("cellbus-sandbox starts")
            .code()
    };
    assert_eq!(status(16 * MIB), Some(0), "16 MiB fits under 64 MiB");
    assert_eq!(
        status(256 * MIB),
        Some(ALLOCATION_REFUSED as i32),
        "256 MiB must be refused under --memory 64Mi"
    );
}
