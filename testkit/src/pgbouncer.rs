//! A private PgBouncer in transaction mode in front of a test PostgreSQL: what Supavisor
//! on port 6543 is to a Supabase project. Debian's PgBouncer 1.18 keeps no named prepared
//! statements across transactions, the strictest a pooler gets.
//!
//! Roles log in through it with their own SCRAM passwords: PgBouncer looks each one up
//! with `auth_query` as the superuser, so roles made after it started (a cell's, a rotated
//! password) work at once.

use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{wait_for, HarnessError, Postgres};

const INSTALL: &str = "apt-get install pgbouncer";
/// Seconds a client's query waits for a server connection before PgBouncer fails it
/// (120 by default): short, so a test of a server that is down does not wait minutes.
const QUERY_WAIT_TIMEOUT: u32 = 3;
/// The OS user PgBouncer runs as when the tests run as root (it refuses root).
const OS_USER: &str = "postgres";

/// A PgBouncer for one test, stopped when dropped.
pub struct PgBouncer {
    port: u16,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl PgBouncer {
    /// Starts PgBouncer in front of `postgres` with at most `server_connections` server
    /// connections per role and database, panicking with the reason if it cannot.
    pub fn start(postgres: &Postgres, server_connections: u32) -> Self {
        Self::try_start(postgres, server_connections)
            .unwrap_or_else(|error| panic!("starting PgBouncer: {error}"))
    }

    pub fn try_start(postgres: &Postgres, server_connections: u32) -> Result<Self, HarnessError> {
        let binary = crate::find_binary("pgbouncer", &[PathBuf::from("/usr/sbin")], INSTALL)?;
        let (host, port) = postgres.host_port();
        let as_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let dir = tempfile::Builder::new()
            .prefix("cellbus-pgbouncer-")
            .tempdir()
            .map_err(HarnessError::io("creating PgBouncer's directory"))?;
        let listen = crate::free_port()?;
        let users = dir.path().join("users.txt");
        std::fs::write(
            &users,
            format!(
                "\"postgres\" \"{}\"\n",
                postgres.password().replace('"', "\"\"")
            ),
        )
        .map_err(HarnessError::io("writing PgBouncer's auth file"))?;
        let log = dir.path().join("pgbouncer.log");
        let config = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n\
                 * = host={host} port={port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {listen}\n\
                 unix_socket_dir =\n\
                 pool_mode = transaction\n\
                 default_pool_size = {server_connections}\n\
                 max_client_conn = 2000\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {users}\n\
                 auth_user = postgres\n\
                 auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename = $1\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 query_wait_timeout = {QUERY_WAIT_TIMEOUT}\n\
                 logfile = {log}\n\
                 pidfile = {pid}\n",
                users = users.display(),
                log = log.display(),
                pid = dir.path().join("pgbouncer.pid").display(),
            ),
        )
        .map_err(HarnessError::io("writing PgBouncer's configuration"))?;
        if as_root {
            give_to_os_user(dir.path())?;
        }
        let mut command = if as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", OS_USER, "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        };
        let mut child = command
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(HarnessError::io(format!("running {}", binary.display())))?;
        let ready = wait_for(Duration::from_secs(10), || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Some(false);
            }
            TcpStream::connect(("127.0.0.1", listen))
                .is_ok()
                .then_some(true)
        });
        if ready != Some(true) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HarnessError::NotReady {
                server: "PgBouncer",
                seconds: 10,
                log: std::fs::read_to_string(&log).unwrap_or_default(),
            });
        }
        Ok(Self {
            port: listen,
            child,
            log,
            _dir: dir,
        })
    }

    /// The loopback port cells connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What PgBouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // Through runuser the child is runuser itself, which passes SIGTERM on; SIGKILL
        // would orphan PgBouncer, so ask first.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        if wait_for(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_))).then_some(())
        })
        .is_none()
        {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Gives `dir` and what is in it to the OS user PgBouncer runs as.
fn give_to_os_user(dir: &Path) -> Result<(), HarnessError> {
    let output = Command::new("chown")
        .args(["-R", OS_USER])
        .arg(dir)
        .output()
        .map_err(HarnessError::io("running chown"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(HarnessError::Command {
        what: "giving PgBouncer's directory to the postgres user".into(),
        output: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
