//! cellbus-sandbox: runs one process cell inside a Job Object and an AppContainer of its
//! own, for the runtime on Windows, which starts it exactly as it starts `cellbus sandbox`
//! on Linux (the flags are in the library's `shim` module). The cell gets this process's
//! standard streams — the runtime's pipes — and nothing else; its exit code becomes ours.
//! Where no AppContainer can be made (Wine), it refuses to run the cell. Whatever the cell leaves
//! behind is ended with it, and if this process is killed (the runtime stopping the cell,
//! or the runtime itself dying), the job's last handle closes and Windows ends every
//! process in it.
#![deny(unsafe_code)]

use std::process::ExitCode;

/// The exit code of a sandbox that could not start its cell, as the Linux one uses.
const CANNOT_START: u8 = 126;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let invocation = match cellbus_sandbox_windows::shim::parse(&args) {
        Ok(invocation) => invocation,
        Err(error) => {
            eprintln!("cellbus-sandbox: {error}");
            return ExitCode::from(CANNOT_START);
        }
    };
    #[cfg(windows)]
    {
        match windows::supervise(&invocation) {
            Ok(code) => std::process::exit(code as i32),
            Err(error) => {
                eprintln!("cellbus-sandbox: {error}");
                ExitCode::from(CANNOT_START)
            }
        }
    }
    #[cfg(not(windows))]
    {
        let _ = invocation;
        eprintln!(
            "cellbus-sandbox confines process cells on Windows; on Linux, `cellbus sandbox` does"
        );
        ExitCode::from(CANNOT_START)
    }
}

#[cfg(windows)]
mod windows {
    use cellbus_sandbox_windows::shim::{self, Invocation};
    use cellbus_sandbox_windows::{
        environment_block, logical_processors, supervise as wait_for, AppContainer, CellStart, Job,
    };

    /// Runs the cell to its end and returns its exit code. The AppContainer comes first:
    /// where there is none to be had, nothing is made and nothing runs.
    pub fn supervise(invocation: &Invocation) -> Result<u32, String> {
        let path = std::env::var("PATH").unwrap_or_default();
        let program = shim::resolve(&invocation.program, &path, |p| p.is_file())
            .ok_or_else(|| format!("`{}` is not found on PATH ({path})", invocation.program))?;
        let program = program
            .to_str()
            .ok_or_else(|| format!("{} is not a Unicode path", program.display()))?;
        let confinement = &invocation.confinement;
        let container = AppContainer::for_cell(confinement).map_err(|e| e.to_string())?;
        container.prepare(confinement).map_err(|e| e.to_string())?;
        // Variables that are not Unicode cannot be the Cell's, which are strings.
        let own = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        let environment = environment_block(&confinement.environment(own));
        let home = confinement.home();
        let job = Job::create().map_err(|e| e.to_string())?;
        let processors = logical_processors().map_err(|e| e.to_string())?;
        job.set_limits(&invocation.policy.limits(processors))
            .map_err(|e| e.to_string())?;
        let start = CellStart {
            container: &container,
            environment: &environment,
            directory: &home,
        };
        let cell = job
            .spawn_cell(program, &invocation.args, &start)
            .map_err(|e| e.to_string())?;
        wait_for(&job, &cell).map_err(|e| e.to_string())
    }
}
