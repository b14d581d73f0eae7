//! job-probe: runs the sandbox against the Windows it is on and writes what held to a file,
//! one `PASS`, `FAIL` or `INFO` line per check; it exits 1 if any check failed.
//! scripts/windows-sandbox-check runs it under Wine; the `windows` CI job on Windows. The
//! children it starts are itself, run with a `child-*` argument. The enforcement tests
//! (tests/enforcement.rs) use the same children on a real Windows.
//!
//! Wine has no AppContainers, so there `cellbus-sandbox.exe` refuses every cell (checked
//! as `sandbox_refuses_to_run_without_an_appcontainer`), and the checks of what it does
//! with a running cell (exit code, standard streams, dying with it) run through
//! `child-supervise`: this probe, supervising the cell with the library's job code the
//! sandbox uses, without the AppContainer. The checks of the AppContainer itself run on
//! Windows only, and are `INFO ... not shown` under Wine.
//!
//! ```text
//! job-probe run RESULT_FILE
//! job-probe child-sleep | child-exit CODE | child-args OUT ARG... | child-spawn-sleep
//!           child-alloc BYTES | child-spin MILLIS | child-error-mode | child-raise
//!           child-echo | child-pid-sleep FILE | child-supervise PROGRAM ARG...
//!           child-confinement OUTSIDE_FILE HOST:PORT... | child-wine-cell CELLS_DIR UID
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
    use cellbus_sandbox_windows::{
        current_token, environment_block, supervise, AppContainer, CellStart, Confinement, Job,
        JobError, JobPolicy, Process,
    };

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
            "child-supervise" if args.len() > 2 => child_supervise(&args[2], &args[3..]),
            "child-confinement" if args.len() > 2 => child_confinement(&args[2], &args[3..]),
            "child-wine-cell" if args.len() == 4 => child_wine_cell(&args[2], &args[3]),
            _ => {
                eprintln!("usage: job-probe run RESULT_FILE (see the source for child-* modes)");
                process::exit(2);
            }
        }
    }

    /// What `cellbus-sandbox` does with a cell once it runs, without the AppContainer Wine
    /// cannot make: the same library calls, the same policy the probe gives the sandbox.
    fn child_supervise(program: &str, args: &[String]) -> ! {
        let run = || -> Result<u32, JobError> {
            let job = Job::create()?;
            job.set_limits(&sandbox_policy().limits(1))?;
            let cell = job.spawn_with_standard_handles(program, args)?;
            supervise(&job, &cell)
        };
        match run() {
            Ok(code) => process::exit(code as i32),
            Err(error) => {
                eprintln!("child-supervise: {error}");
                process::exit(126)
            }
        }
    }

    /// Prints, one `key=value` line each, what the cell it runs as may do: its token, its
    /// directories, writing in them and in `outside`, and connecting to each address.
    fn child_confinement(outside: &str, addresses: &[String]) -> ! {
        use std::net::{TcpStream, ToSocketAddrs};
        let token = match current_token() {
            Ok(facts) => format!("{}/{:#x}", facts.app_container, facts.integrity),
            Err(error) => format!("unknown: {error}"),
        };
        println!("token={token}");
        let var = |name| env::var(name).unwrap_or_default();
        println!("home={}", var("HOME"));
        println!("userprofile={}", var("USERPROFILE"));
        println!("tmp={}", var("TMP"));
        println!("temp={}", var("TEMP"));
        let cwd = env::current_dir().map(|d| d.display().to_string());
        println!("cwd={}", cwd.unwrap_or_else(|e| e.to_string()));
        let attempt = |path: std::path::PathBuf| match fs::write(&path, "written by a cell") {
            Ok(()) => "ok".to_owned(),
            Err(error) => format!("denied: {error}"),
        };
        println!(
            "write home={}",
            attempt(std::path::PathBuf::from(var("HOME")).join("w"))
        );
        println!("write tmp={}", attempt(env::temp_dir().join("w")));
        println!(
            "write outside={}",
            attempt(std::path::PathBuf::from(outside))
        );
        for address in addresses {
            let connected = address
                .to_socket_addrs()
                .map_err(|e| format!("resolving: {e}"))
                .and_then(|mut found| found.next().ok_or_else(|| "resolved to nothing".to_owned()))
                .and_then(|found| {
                    TcpStream::connect_timeout(&found, Duration::from_secs(10))
                        .map_err(|e| e.to_string())
                });
            match connected {
                Ok(_) => println!("connect {address}=ok"),
                Err(error) => println!("connect {address}=failed: {error}"),
            }
        }
        process::exit(0)
    }

    /// The calls only a child makes; the sandbox's own calls are in the library's job module.
    #[allow(unsafe_code)]
    mod ffi {
        use windows_sys::Win32::System::Diagnostics::Debug::{GetErrorMode, RaiseException};
        use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};

        /// Whether this is Wine: its ntdll exports `wine_get_version`, no Windows one does.
        pub fn is_wine() -> bool {
            let ntdll: Vec<u16> = "ntdll.dll".encode_utf16().chain(Some(0)).collect();
            // SAFETY: a NUL-terminated name; ntdll is loaded in every process.
            let module = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
            if module.is_null() {
                return false;
            }
            // SAFETY: a loaded module and a NUL-terminated name.
            unsafe { GetProcAddress(module, b"wine_get_version\0".as_ptr()) }.is_some()
        }

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
        let cells = env::temp_dir().join(format!("cellbus-probe-cells-{}", process::id()));
        let cell = Confinement {
            // Unique on this machine while the probe runs, and far from a runtime's.
            uid: 3_000_000_000 + process::id() % 1_000_000_000,
            cells_dir: cells.clone(),
            readable: vec![std::path::PathBuf::from(exe)],
            network: false,
        };
        let supervisor = if ffi::is_wine() {
            report.check(
                "sandbox_refuses_to_run_without_an_appcontainer",
                sandbox_refuses(&sandbox, &cell, exe),
            );
            report.info("wine_appcontainer_calls", wine_calls(&cell, exe));
            Supervisor::Library
        } else {
            report.info(
                "sandbox_refuses_to_run_without_an_appcontainer",
                "not shown: this Windows makes AppContainers".to_owned(),
            );
            Supervisor::Sandbox(&sandbox)
        };
        report.check(
            "supervisor_passes_the_exit_code",
            supervised_exit(&supervisor, &cell, exe),
        );
        report.check(
            "supervisor_passes_the_standard_streams",
            supervised_streams(&supervisor, &cell, exe),
        );
        report.check(
            "killing_the_supervisor_kills_the_cell",
            supervisor_killed(&supervisor, &cell, exe),
        );
        report.check("sandbox_refuses_bad_flags", sandbox_bad_flags(&sandbox));
        match supervisor {
            Supervisor::Sandbox(sandbox) => appcontainer_checks(report, sandbox, &cell, exe),
            Supervisor::Library => {
                for check in APPCONTAINER_CHECKS {
                    report.info(check, "not shown: Wine has no AppContainers".to_owned());
                }
            }
        }
        let _ = fs::remove_dir_all(&cells);
    }

    /// What Wine does with the calls an AppContainer takes besides the profile's: runs
    /// `child-wine-cell`, whose output (and that of the cell it starts) is the answer.
    fn wine_calls(cell: &Confinement, exe: &str) -> String {
        let output = process::Command::new(exe)
            .arg("child-wine-cell")
            .arg(&cell.cells_dir)
            .arg((cell.uid + 1).to_string())
            .output();
        match output {
            Ok(output) => {
                let text = String::from_utf8_lossy(&output.stdout).into_owned()
                    + &String::from_utf8_lossy(&output.stderr);
                let lines: Vec<&str> = text.lines().collect();
                format!("{}; {}", lines.join("; "), output.status)
            }
            Err(error) => format!("starting child-wine-cell: {error}"),
        }
    }

    /// A cell started the way `cellbus-sandbox` starts one, in an AppContainer of a SID of
    /// the AppContainer form that no profile stands behind (Wine makes no profiles).
    fn child_wine_cell(cells_dir: &str, uid: &str) -> ! {
        let exe = env::current_exe().expect("own path");
        let exe = exe.to_str().expect("a UTF-8 path").to_owned();
        match current_token() {
            Ok(facts) => println!("the probe's own token: {facts:?}"),
            Err(error) => println!("the probe's own token: {error}"),
        }
        let sid = "S-1-15-2-1-2-3-4-5-6-7";
        let mut network = true;
        let container = loop {
            match AppContainer::unregistered(sid, network) {
                Ok(container) => break container,
                Err(error) => {
                    println!("{sid}, network {network}: {error}");
                    if !network {
                        process::exit(0)
                    }
                    network = false;
                }
            }
        };
        println!("{sid}, network {network}: made");
        let cell = Confinement {
            uid: uid.parse().unwrap_or(1),
            cells_dir: cells_dir.into(),
            readable: vec![exe.clone().into()],
            network,
        };
        match container.prepare(&cell) {
            Ok(()) => println!("prepare: home and tmp made, every grant written"),
            Err(error) => println!("prepare: {error}"),
        }
        let environment = environment_block(&cell.environment(env::vars()));
        let home = cell.home();
        let start = CellStart {
            container: &container,
            environment: &environment,
            directory: &home,
        };
        let outside = env::temp_dir().join(format!("cellbus-wine-{}.txt", process::id()));
        let outside = outside.display().to_string();
        let run = Job::create().and_then(|job| {
            let child = job.spawn_cell(&exe, &["child-confinement", &outside], &start)?;
            supervise(&job, &child)
        });
        match run {
            Ok(code) => println!("spawn_cell: the cell ran and exited with {code}"),
            Err(error) => println!("spawn_cell: {error}"),
        }
        let _ = fs::remove_file(&outside);
        let _ = fs::remove_dir_all(cell.cell_dir());
        process::exit(0)
    }

    /// What runs a cell in these checks.
    enum Supervisor<'a> {
        /// `cellbus-sandbox.exe`, AppContainer and all (Windows).
        Sandbox(&'a std::path::Path),
        /// This probe's `child-supervise`: the sandbox's job code without the AppContainer
        /// (Wine).
        Library,
    }

    impl Supervisor<'_> {
        fn describe(&self) -> &'static str {
            match self {
                Supervisor::Sandbox(_) => "through cellbus-sandbox.exe",
                Supervisor::Library => {
                    "through the library's job supervision (Wine: no AppContainer)"
                }
            }
        }

        /// The command that runs `child` as a cell.
        fn command(&self, cell: &Confinement, exe: &str, child: &[&str]) -> process::Command {
            match self {
                Supervisor::Sandbox(sandbox) => sandbox_command(sandbox, cell, exe, child),
                Supervisor::Library => {
                    let mut command = process::Command::new(exe);
                    command.args(["child-supervise", exe]).args(child);
                    command
                }
            }
        }
    }

    const APPCONTAINER_CHECKS: [&str; 4] = [
        "cell_runs_in_an_appcontainer_at_low_integrity",
        "cell_writes_only_in_its_home_and_tmp",
        "cell_without_network_connects_nowhere",
        "cell_with_network_connects_out",
    ];

    /// The flags the runtime passes for a cell with 256Mi of memory (no CPU cap: Wine may
    /// refuse rate control, see `cpu_rate_control`).
    fn sandbox_command(
        sandbox: &std::path::Path,
        cell: &Confinement,
        exe: &str,
        child: &[&str],
    ) -> process::Command {
        let mut command = process::Command::new(sandbox);
        command
            .args(["sandbox", "--memory", "268435456", "--cpu-seconds", "3600"])
            .args(["--open-files", "1024", "--processes", "16"])
            .arg("--uid")
            .arg(cell.uid.to_string())
            .arg("--cells-dir")
            .arg(&cell.cells_dir);
        for path in &cell.readable {
            command.arg("--read").arg(path);
        }
        if cell.network {
            command.arg("--network");
        }
        command.arg("--").arg(exe).args(child);
        command
    }

    fn sandbox_refuses(
        sandbox: &std::path::Path,
        cell: &Confinement,
        exe: &str,
    ) -> Result<String, String> {
        let output = sandbox_command(sandbox, cell, exe, &["child-exit", "0"])
            .output()
            .map_err(|e| format!("starting {}: {e}", sandbox.display()))?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let refused = output.status.code() == Some(126)
            && stderr.contains("cannot make AppContainers")
            && stderr.contains("does not run without one");
        // Nothing is made before the AppContainer is.
        let untouched = !cell.cell_dir().exists();
        if refused && untouched {
            Ok(stderr.trim().to_owned())
        } else {
            Err(format!(
                "{}, cell directory made: {}: {stderr:?}",
                output.status, !untouched
            ))
        }
    }

    fn supervised_exit(
        supervisor: &Supervisor,
        cell: &Confinement,
        exe: &str,
    ) -> Result<String, String> {
        let status = supervisor
            .command(cell, exe, &["child-exit", "7"])
            .status()
            .map_err(|e| format!("starting the supervisor: {e}"))?;
        match status.code() {
            Some(7) => Ok(format!("7, {}", supervisor.describe())),
            other => Err(format!(
                "exit code {other:?}, not 7, {}",
                supervisor.describe()
            )),
        }
    }

    fn supervised_streams(
        supervisor: &Supervisor,
        cell: &Confinement,
        exe: &str,
    ) -> Result<String, String> {
        use std::io::Write;
        let mut child = supervisor
            .command(cell, exe, &["child-echo"])
            .stdin(process::Stdio::piped())
            .stdout(process::Stdio::piped())
            .stderr(process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the supervisor: {e}"))?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(b"ping\n").map_err(|e| e.to_string())?;
        drop(stdin);
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        let echoed = String::from_utf8_lossy(&output.stdout).into_owned();
        if echoed == "ping\n" && output.status.success() {
            Ok(format!("{echoed:?}, {}", supervisor.describe()))
        } else {
            Err(format!(
                "echoed {echoed:?}, {}, stderr {:?}, {}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                supervisor.describe()
            ))
        }
    }

    fn supervisor_killed(
        supervisor: &Supervisor,
        cell: &Confinement,
        exe: &str,
    ) -> Result<String, String> {
        // In the cell's tmp, the one place besides its home an AppContainer cell may write.
        fs::create_dir_all(cell.tmp()).map_err(|e| e.to_string())?;
        let file = cell.tmp().join("pid");
        let _ = fs::remove_file(&file);
        let file_arg = file.to_str().ok_or("a UTF-8 path")?.to_owned();
        let mut shim = supervisor
            .command(cell, exe, &["child-pid-sleep", &file_arg])
            .spawn()
            .map_err(|e| format!("starting the supervisor: {e}"))?;
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
            .map_err(|e| format!("killing the supervisor: {e}"))?;
        let _ = shim.wait();
        match cell.wait(PATIENCE).map_err(|e| e.to_string())? {
            Some(code) => Ok(format!(
                "the cell ended with {code}, {}",
                supervisor.describe()
            )),
            None => Err(format!(
                "cell {pid} still runs after its supervisor was killed, {}",
                supervisor.describe()
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

    /// Runs `child-confinement` in the sandbox and reads its `key=value` lines.
    fn confinement_report(
        sandbox: &std::path::Path,
        cell: &Confinement,
        exe: &str,
        outside: &str,
        addresses: &[&str],
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        let mut child = vec!["child-confinement", outside];
        child.extend(addresses);
        let output = sandbox_command(sandbox, cell, exe, &child)
            .output()
            .map_err(|e| format!("starting {}: {e}", sandbox.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(format!(
                "{}: stdout {stdout:?}, stderr {:?}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(stdout
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect())
    }

    /// The AppContainer's checks, on Windows: the cell's token, where it may write, and
    /// what it may connect to without and with `--network`. Without it, the cell must
    /// reach neither a listener of the probe's on loopback (closed to every AppContainer
    /// without a loopback exemption, so this shows that, not the capability) nor on the
    /// machine's own address nor github.com:443; with it, github.com:443, which a CI
    /// runner always reaches, must connect.
    fn appcontainer_checks(
        report: &mut Report,
        sandbox: &std::path::Path,
        cell: &Confinement,
        exe: &str,
    ) {
        const OUT: &str = "github.com:443";
        let listener = std::net::TcpListener::bind("0.0.0.0:0");
        let port = listener
            .as_ref()
            .ok()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        let loopback = port.map(|port| format!("127.0.0.1:{port}"));
        let own = port.and_then(|port| own_address().map(|ip| format!("{ip}:{port}")));
        // The probe's own directory, which the cell's SID has no entry for.
        let outside = std::path::Path::new(exe).with_file_name("written-by-a-cell.txt");
        let _ = fs::remove_file(&outside);
        let outside_arg = outside.display().to_string();
        let mut addresses: Vec<&str> = vec![OUT];
        addresses.extend(loopback.as_deref());
        addresses.extend(own.as_deref());

        let without = confinement_report(sandbox, cell, exe, &outside_arg, &addresses);
        let with = confinement_report(
            sandbox,
            &Confinement {
                network: true,
                ..cell.clone()
            },
            exe,
            &outside_arg,
            &[OUT],
        );
        let get = |lines: &std::collections::BTreeMap<String, String>, key: &str| {
            lines.get(key).cloned().unwrap_or_default()
        };
        match &without {
            Err(error) => {
                for check in &APPCONTAINER_CHECKS[..3] {
                    report.check(check, Err(error.clone()));
                }
            }
            Ok(lines) => {
                let token = get(lines, "token");
                report.check(
                    APPCONTAINER_CHECKS[0],
                    if token == "true/0x1000" {
                        Ok("TokenIsAppContainer, integrity 0x1000 (low)".to_owned())
                    } else {
                        Err(format!("token (app container/integrity) {token}"))
                    },
                );
                let home = cell.home().display().to_string();
                let tmp = cell.tmp().display().to_string();
                let placed = get(lines, "home") == home
                    && get(lines, "userprofile") == home
                    && get(lines, "tmp") == tmp
                    && get(lines, "temp") == tmp
                    && get(lines, "cwd").trim_end_matches('\\') == home;
                let wrote_own = get(lines, "write home") == "ok" && get(lines, "write tmp") == "ok";
                let refused =
                    get(lines, "write outside").starts_with("denied") && !outside.exists();
                let _ = fs::remove_file(&outside);
                report.check(
                    APPCONTAINER_CHECKS[1],
                    if placed && wrote_own && refused {
                        Ok(format!(
                            "home and tmp written, {} {}",
                            outside.display(),
                            get(lines, "write outside")
                        ))
                    } else {
                        Err(format!("{lines:?}"))
                    },
                );
                let connects: Vec<(&String, &String)> = lines
                    .iter()
                    .filter(|(key, _)| key.starts_with("connect "))
                    .collect();
                let all_failed = connects.len() == addresses.len()
                    && connects
                        .iter()
                        .all(|(_, result)| result.starts_with("failed"));
                report.check(
                    APPCONTAINER_CHECKS[2],
                    if all_failed {
                        Ok(format!("{connects:?}"))
                    } else {
                        Err(format!("{connects:?} (tried {addresses:?})"))
                    },
                );
            }
        }
        report.check(
            APPCONTAINER_CHECKS[3],
            with.and_then(|lines| {
                let result = get(&lines, &format!("connect {OUT}"));
                if result == "ok" {
                    Ok(format!("{OUT} connected with internetClient"))
                } else {
                    Err(format!("{OUT}: {result:?}"))
                }
            }),
        );
        drop(listener);
    }

    /// The address this machine reaches the internet from, found without sending
    /// anything: a UDP socket's local address once it is connected.
    fn own_address() -> Option<std::net::IpAddr> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect("8.8.8.8:53").ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
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
