//! job-probe: runs the Job Object sandbox against the Windows it is on and writes what held
//! to a file, one `PASS`, `FAIL` or `INFO` line per check; it exits 1 if any check failed.
//! scripts/windows-sandbox-check runs it under Wine; the children it starts are itself, run
//! with a `child-*` argument. The enforcement tests (tests/enforcement.rs) use the same
//! children on a real Windows.
//!
//! ```text
//! job-probe run RESULT_FILE
//! job-probe child-sleep | child-exit CODE | child-args OUT ARG... | child-spawn-sleep
//!           child-alloc BYTES | child-spin MILLIS | child-error-mode | child-raise
//!           child-echo | child-pid-sleep FILE
//! ```
#![deny(unsafe_code)]

fn main() {
    #[cfg(windows)]
    windows::main();
    #[cfg(not(windows))]
    {
        eprintln!("job-probe runs on Windows (or Wine): see scripts/windows-sandbox-check");
        std::process::exit(2);
    }
}

#[cfg(windows)]
mod windows {
    use std::fmt::Write as _;
    use std::time::{Duration, Instant};
    use std::{env, fs, process, thread};

    use cellbus_sandbox_windows::policy::UI_RESTRICTIONS;
    use cellbus_sandbox_windows::{Job, JobError, JobPolicy, Process};

    /// Exit code of `child-alloc` when the allocation was refused.
    pub const ALLOCATION_REFUSED: i32 = 3;
    /// Exception `child-raise` raises; an unhandled exception's code is the exit code.
    pub const RAISED: u32 = 0xE0C0_FFEE;

    /// How long a child may take to start, or to die once killed; Wine is slow to start
    /// its first processes.
    const PATIENCE: Duration = Duration::from_secs(30);

    pub fn main() {
        let args: Vec<String> = env::args().collect();
        let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
        match arg(1) {
            "run" if args.len() == 3 => run(&args[2]),
            "child-sleep" => loop {
                thread::sleep(Duration::from_secs(3600));
            },
            "child-exit" => process::exit(arg(2).parse().unwrap_or(1)),
            "child-args" => {
                let written = format!("{:?}", &args[3..]);
                process::exit(i32::from(fs::write(arg(2), written).is_err()))
            }
            "child-spawn-sleep" => {
                // Started with std, not through the job: a descendant joins the job by
                // itself.
                let exe = env::current_exe().expect("own path");
                let spawned = process::Command::new(exe).arg("child-sleep").spawn();
                if spawned.is_err() {
                    process::exit(4);
                }
                loop {
                    thread::sleep(Duration::from_secs(3600));
                }
            }
            "child-alloc" => {
                let bytes: usize = arg(2).parse().unwrap_or(0);
                let mut memory: Vec<u8> = Vec::new();
                if memory.try_reserve_exact(bytes).is_err() {
                    process::exit(ALLOCATION_REFUSED);
                }
                // Touch every page so the memory is really used, not only reserved.
                memory.resize(bytes, 1);
                process::exit(i32::from(memory.iter().step_by(4096).any(|b| *b != 1)))
            }
            "child-spin" => {
                let millis: u64 = arg(2).parse().unwrap_or(0);
                let until = Instant::now() + Duration::from_millis(millis);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            "child-error-mode" => process::exit(ffi::error_mode() as i32),
            "child-echo" => {
                let mut line = String::new();
                let read = std::io::stdin().read_line(&mut line);
                print!("{line}");
                process::exit(i32::from(read.is_err()))
            }
            "child-pid-sleep" => {
                if fs::write(arg(2), process::id().to_string()).is_err() {
                    process::exit(4);
                }
                loop {
                    thread::sleep(Duration::from_secs(3600));
                }
            }
            "child-raise" => ffi::raise(RAISED),
            _ => {
                eprintln!("usage: job-probe run RESULT_FILE (see the source for child-* modes)");
                process::exit(2);
            }
        }
    }

    /// The calls only a child makes; the sandbox's own calls are in the library's job module.
    #[allow(unsafe_code)]
    mod ffi {
        use windows_sys::Win32::System::Diagnostics::Debug::{GetErrorMode, RaiseException};

        pub fn error_mode() -> u32 {
            // SAFETY: no arguments; reads the process's error mode.
            unsafe { GetErrorMode() }
        }

        pub fn raise(code: u32) -> ! {
            // EXCEPTION_NONCONTINUABLE: the exception cannot be resumed past.
            // SAFETY: no arguments array (count 0, null pointer), as documented.
            unsafe { RaiseException(code, 1, 0, std::ptr::null()) };
            unreachable!("a noncontinuable exception does not return")
        }
    }

    struct Report {
        text: String,
        failed: bool,
    }

    impl Report {
        fn check(&mut self, name: &str, result: Result<String, String>) {
            match result {
                Ok(detail) => writeln!(self.text, "PASS {name}: {detail}"),
                Err(detail) => {
                    self.failed = true;
                    writeln!(self.text, "FAIL {name}: {detail}")
                }
            }
            .expect("writing to a String");
        }

        fn info(&mut self, name: &str, detail: String) {
            writeln!(self.text, "INFO {name}: {detail}").expect("writing to a String");
        }
    }

    fn run(result_file: &str) {
        let mut report = Report {
            text: String::new(),
            failed: false,
        };
        let exe = env::current_exe().expect("own path");
        let exe = exe.to_str().expect("a UTF-8 path").to_owned();
        checks(&mut report, &exe);
        let wrote = fs::write(result_file, &report.text);
        if wrote.is_err() || report.failed {
            process::exit(1);
        }
    }

    fn checks(report: &mut Report, exe: &str) {
        let e = |error: JobError| error.to_string();

        report.check("limits_accepted", limits_accepted());
        report.info("limits_read_back", limits_read_back());

        let cpu = JobPolicy::new().cpu("500m").expect("a valid quantity");
        let outcome = Job::create().and_then(|job| job.set_limits(&cpu.limits(2)));
        report.info(
            "cpu_rate_control",
            match outcome {
                Ok(()) => "accepted".to_owned(),
                Err(error) => format!("refused: {error}"),
            },
        );

        let job = match sandbox() {
            Ok(job) => job,
            Err(error) => return report.check("job_created", Err(e(error))),
        };
        report.check("suspended_child_runs_inside_the_job", in_job(&job, exe));
        report.check("exit_code_is_read", exit_code(&job, exe));
        report.check("arguments_survive_the_command_line", arguments(&job, exe));
        drop(job);

        report.check("descendants_are_counted", counting(exe));
        report.check("terminate_ends_every_process", terminate(exe));
        report.check("closing_the_job_kills_its_processes", kill_on_close(exe));

        let times = spin_times(exe);
        report.info("accounting_times", times);

        // `cellbus-sandbox`, built beside this probe, as the runtime starts it.
        let sandbox = std::path::Path::new(exe).with_file_name("cellbus-sandbox.exe");
        report.check("sandbox_passes_the_exit_code", sandbox_exit(&sandbox, exe));
        report.check(
            "sandbox_passes_the_standard_streams",
            sandbox_streams(&sandbox, exe),
        );
        report.check(
            "killing_the_sandbox_kills_the_cell",
            sandbox_killed(&sandbox, exe),
        );
        report.check("sandbox_refuses_bad_flags", sandbox_bad_flags(&sandbox));
    }

    /// The flags the runtime passes for a cell with 256Mi of memory (no CPU cap: Wine may
    /// refuse rate control, see `cpu_rate_control`).
    fn sandbox_command(sandbox: &std::path::Path, exe: &str, child: &[&str]) -> process::Command {
        let mut command = process::Command::new(sandbox);
        command
            .args(["sandbox", "--memory", "268435456", "--cpu-seconds", "3600"])
            .args(["--open-files", "1024", "--processes", "16", "--", exe])
            .args(child);
        command
    }

    fn sandbox_exit(sandbox: &std::path::Path, exe: &str) -> Result<String, String> {
        let status = sandbox_command(sandbox, exe, &["child-exit", "7"])
            .status()
            .map_err(|e| format!("starting {}: {e}", sandbox.display()))?;
        match status.code() {
            Some(7) => Ok("7".into()),
            other => Err(format!("exit code {other:?}, not 7")),
        }
    }

    fn sandbox_streams(sandbox: &std::path::Path, exe: &str) -> Result<String, String> {
        use std::io::Write;
        let mut child = sandbox_command(sandbox, exe, &["child-echo"])
            .stdin(process::Stdio::piped())
            .stdout(process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", sandbox.display()))?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(b"ping\n").map_err(|e| e.to_string())?;
        drop(stdin);
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        let echoed = String::from_utf8_lossy(&output.stdout).into_owned();
        if echoed == "ping\n" && output.status.success() {
            Ok(format!("{echoed:?}"))
        } else {
            Err(format!("echoed {echoed:?}, {}", output.status))
        }
    }

    fn sandbox_killed(sandbox: &std::path::Path, exe: &str) -> Result<String, String> {
        let file = env::temp_dir().join(format!("cellbus-probe-{}.pid", process::id()));
        let _ = fs::remove_file(&file);
        let file_arg = file.to_str().ok_or("a UTF-8 path")?.to_owned();
        let mut shim = sandbox_command(sandbox, exe, &["child-pid-sleep", &file_arg])
            .spawn()
            .map_err(|e| format!("starting {}: {e}", sandbox.display()))?;
        let start = Instant::now();
        let pid = loop {
            if let Some(pid) = fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.parse::<u32>().ok())
            {
                break pid;
            }
            if start.elapsed() > PATIENCE {
                let _ = shim.kill();
                return Err("the cell never started".into());
            }
            thread::sleep(Duration::from_millis(50));
        };
        let _ = fs::remove_file(&file);
        let cell = Process::open(pid).map_err(|e| e.to_string())?;
        shim.kill()
            .map_err(|e| format!("killing the sandbox: {e}"))?;
        let _ = shim.wait();
        match cell.wait(PATIENCE).map_err(|e| e.to_string())? {
            Some(code) => Ok(format!("the cell ended with {code}")),
            None => Err(format!(
                "cell {pid} still runs after its sandbox was killed"
            )),
        }
    }

    fn sandbox_bad_flags(sandbox: &std::path::Path) -> Result<String, String> {
        let output = process::Command::new(sandbox)
            .args(["sandbox", "--bogus", "1", "--", "x"])
            .output()
            .map_err(|e| format!("starting {}: {e}", sandbox.display()))?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.code() == Some(126) && stderr.contains("unknown flag `--bogus`") {
            Ok(stderr.trim().to_owned())
        } else {
            Err(format!("{}: {stderr:?}", output.status))
        }
    }

    /// A job with limits Wine accepts (no CPU rate); the limits are generous so nothing in
    /// these checks hits them.
    fn sandbox() -> Result<Job, JobError> {
        let job = Job::create()?;
        job.set_limits(&sandbox_policy().limits(1))?;
        Ok(job)
    }

    fn sandbox_policy() -> JobPolicy {
        JobPolicy::new()
            .process_memory("512Mi")
            .and_then(|p| p.job_memory("1Gi"))
            .and_then(|p| p.active_processes(16))
            .expect("valid quantities")
    }

    /// The limits of `sandbox()` and every UI restriction, set: Wine accepts them.
    fn limits_accepted() -> Result<String, String> {
        let limits = sandbox_policy().limits(1);
        let job = Job::create().map_err(|e| e.to_string())?;
        job.set_limits(&limits).map_err(|e| e.to_string())?;
        Ok(format!("{limits:?}"))
    }

    /// The limits as read back. Wine answers zeros for the extended limits and refuses
    /// the UI class, so this is information here; the enforcement tests compare on Windows.
    fn limits_read_back() -> String {
        let limits = sandbox_policy().limits(1);
        let job = match Job::create().and_then(|job| job.set_limits(&limits).map(|()| job)) {
            Ok(job) => job,
            Err(error) => return error.to_string(),
        };
        let extended = match job.query_extended_limits() {
            Ok(read) if read == limits.extended => "extended limits as set".to_owned(),
            Ok(read) => format!("extended limits read back as {read:?}"),
            Err(error) => error.to_string(),
        };
        let ui = match job.query_ui_restrictions() {
            Ok(ui) if ui == UI_RESTRICTIONS => "UI restrictions as set".to_owned(),
            Ok(ui) => format!("UI restrictions read back as {ui:#x}"),
            Err(error) => error.to_string(),
        };
        format!("{extended}; {ui}")
    }

    fn in_job(job: &Job, exe: &str) -> Result<String, String> {
        let child = job
            .spawn(exe, &["child-sleep"])
            .map_err(|e| e.to_string())?;
        if !job.contains(&child).map_err(|e| e.to_string())? {
            return Err(format!("process {} is not in the job", child.id()));
        }
        if job.contains_current_process().map_err(|e| e.to_string())? {
            return Err("the probe itself is in the job".to_owned());
        }
        if let Some(code) = child
            .wait(Duration::from_millis(500))
            .map_err(|e| e.to_string())?
        {
            return Err(format!("the sleeping child exited with {code}"));
        }
        job.terminate(0).map_err(|e| e.to_string())?;
        Ok(format!(
            "process {} in the job, the probe outside",
            child.id()
        ))
    }

    fn exit_code(job: &Job, exe: &str) -> Result<String, String> {
        let child = job
            .spawn(exe, &["child-exit", "42"])
            .map_err(|e| e.to_string())?;
        match child.wait(PATIENCE).map_err(|e| e.to_string())? {
            Some(42) => Ok("resumed, ran and exited with 42".to_owned()),
            other => Err(format!("expected exit code 42, got {other:?}")),
        }
    }

    fn arguments(job: &Job, exe: &str) -> Result<String, String> {
        let out = env::temp_dir().join(format!("job-probe-args-{}.txt", process::id()));
        let out = out.to_str().expect("a UTF-8 path").to_owned();
        let sent = [
            "",
            "two words",
            "say \"hi\"",
            "C:\\dir with space\\",
            "a\\\\\"b",
            "\\\\server\\share",
            "ünïcödé ✓",
            "tab\there",
        ];
        let mut args = vec!["child-args", out.as_str()];
        args.extend(sent.iter());
        let child = job.spawn(exe, &args).map_err(|e| e.to_string())?;
        let code = child.wait(PATIENCE).map_err(|e| e.to_string())?;
        let received = fs::read_to_string(&out).unwrap_or_default();
        let _ = fs::remove_file(&out);
        let expected = format!("{sent:?}");
        if code == Some(0) && received == expected {
            Ok(format!(
                "{} arguments, quotes and backslashes included",
                sent.len()
            ))
        } else {
            Err(format!(
                "exit {code:?}; sent {expected}, child read {received}"
            ))
        }
    }

    fn counting(exe: &str) -> Result<String, String> {
        let job = sandbox().map_err(|e| e.to_string())?;
        let _sleeper = job
            .spawn(exe, &["child-sleep"])
            .map_err(|e| e.to_string())?;
        let _parent = job
            .spawn(exe, &["child-spawn-sleep"])
            .map_err(|e| e.to_string())?;
        // Two children and the grandchild the second one starts.
        let seen = poll(|| job.accounting().map(|a| a.active_processes), |n| n == 3)?;
        let accounting = job.accounting().map_err(|e| e.to_string())?;
        job.terminate(0).map_err(|e| e.to_string())?;
        match seen {
            Some(_) => Ok(format!("{accounting:?}")),
            None => Err(format!("expected 3 active processes, saw {accounting:?}")),
        }
    }

    /// A job holding two sleeping children and the grandchild the second one starts, all
    /// three running.
    fn three_sleepers(exe: &str) -> Result<(Job, [Process; 2]), String> {
        let job = sandbox().map_err(|e| e.to_string())?;
        let children = [
            job.spawn(exe, &["child-sleep"])
                .map_err(|e| e.to_string())?,
            job.spawn(exe, &["child-spawn-sleep"])
                .map_err(|e| e.to_string())?,
        ];
        poll(|| job.accounting().map(|a| a.active_processes), |n| n == 3)?;
        Ok((job, children))
    }

    fn terminate(exe: &str) -> Result<String, String> {
        let (job, children) = three_sleepers(exe)?;
        job.terminate(7).map_err(|e| e.to_string())?;
        let codes = exit_codes(&children)?;
        if codes.iter().any(|c| *c != Some(7)) {
            return Err(format!("exit codes after TerminateJobObject(7): {codes:?}"));
        }
        let active = poll(|| job.accounting().map(|a| a.active_processes), |n| n == 0)?;
        match active {
            Some(_) => Ok("both children exited with 7; no process left".to_owned()),
            None => Err(format!("still active: {:?}", job.accounting())),
        }
    }

    fn kill_on_close(exe: &str) -> Result<String, String> {
        let (job, children) = three_sleepers(exe)?;
        drop(job);
        let codes = exit_codes(&children)?;
        if codes.iter().any(Option::is_none) {
            return Err(format!("children alive after the job closed: {codes:?}"));
        }
        Ok(format!("exit codes {codes:?}"))
    }

    fn spin_times(exe: &str) -> String {
        let run = || -> Result<String, JobError> {
            let job = sandbox()?;
            let child = job.spawn(exe, &["child-spin", "300"])?;
            child.wait(PATIENCE)?;
            Ok(format!("{:?}", job.accounting()?))
        };
        run().unwrap_or_else(|e| e.to_string())
    }

    fn exit_codes(children: &[Process]) -> Result<Vec<Option<u32>>, String> {
        children
            .iter()
            .map(|c| c.wait(PATIENCE).map_err(|e| e.to_string()))
            .collect()
    }

    /// Reads `value` until `done` holds or PATIENCE passes: the value that held, or `None`.
    fn poll<T: Copy>(
        value: impl Fn() -> Result<T, JobError>,
        done: impl Fn(T) -> bool,
    ) -> Result<Option<T>, String> {
        let start = Instant::now();
        loop {
            let v = value().map_err(|e| e.to_string())?;
            if done(v) {
                return Ok(Some(v));
            }
            if start.elapsed() > PATIENCE {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}
