//! A private PostgreSQL cluster made with `initdb` and run with `pg_ctl`. PostgreSQL
//! refuses to run as root, so when the tests run as root the cluster belongs to, and
//! runs as, the `postgres` user.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::{find_binary, HarnessError};

const INSTALL: &str = "apt-get install -y postgresql";
const OS_USER: &str = "postgres";

/// A PostgreSQL server for one test, or the one `CELLBUS_TEST_DATABASE_URL` names.
pub struct Postgres {
    url: String,
    own: Option<Own>,
}

struct Own {
    pg_ctl: PathBuf,
    data: PathBuf,
    /// The server options it was started with (its port among them).
    options: String,
    log: PathBuf,
    as_root: bool,
    _dir: TempDir,
}

impl Postgres {
    /// Starts a server, panicking with the reason (and the install command when the
    /// binaries are missing) if it cannot.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|error| panic!("starting PostgreSQL: {error}"))
    }

    pub fn try_start() -> Result<Self, HarnessError> {
        if let Ok(url) = std::env::var("CELLBUS_TEST_DATABASE_URL") {
            return Ok(Self { url, own: None });
        }
        match std::env::var_os("CELLBUS_PG_BIN") {
            Some(dir) => Self::start_from(Path::new(&dir)),
            None => {
                let extra = debian_bin_dirs();
                let initdb = find_binary("initdb", &extra, INSTALL)?;
                let pg_ctl = find_binary("pg_ctl", &extra, INSTALL)?;
                Self::start_binaries(initdb, pg_ctl)
            }
        }
    }

    /// Starts a server from the `initdb` and `pg_ctl` in `bin_dir`.
    pub fn start_from(bin_dir: &Path) -> Result<Self, HarnessError> {
        let [initdb, pg_ctl] = ["initdb", "pg_ctl"].map(|name| bin_dir.join(name));
        for (binary, path) in [("initdb", &initdb), ("pg_ctl", &pg_ctl)] {
            if !path.is_file() {
                return Err(HarnessError::Missing {
                    binary,
                    searched: format!(" in {}", bin_dir.display()),
                    install: INSTALL,
                });
            }
        }
        Self::start_binaries(initdb, pg_ctl)
    }

    fn start_binaries(initdb: PathBuf, pg_ctl: PathBuf) -> Result<Self, HarnessError> {
        let as_root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);

        let dir = tempfile::Builder::new()
            .prefix("cellbus-pg-")
            .tempdir()
            .map_err(HarnessError::io("creating the PostgreSQL directory"))?;
        let data = dir.path().join("data");
        if as_root {
            let chown = Command::new("chown")
                .args([OS_USER, &dir.path().to_string_lossy()])
                .output()
                .map_err(HarnessError::io("running chown"))?;
            check(
                "giving the PostgreSQL directory to the postgres user",
                &chown,
            )?;
        }
        // Connections over TCP need a password, as on a real server, so tests of
        // roles and their passwords mean something; the socket stays trusted for
        // pg_ctl.
        let password = format!("admin-{}", std::process::id());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password)
            .map_err(HarnessError::io("writing the PostgreSQL password file"))?;
        if as_root {
            let chown = Command::new("chown")
                .args([OS_USER, &pwfile.to_string_lossy()])
                .output()
                .map_err(HarnessError::io("running chown"))?;
            check("giving the password file to the postgres user", &chown)?;
        }
        let init = run_as(as_root, &initdb)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--no-sync", "-E", "UTF8"])
            .output()
            .map_err(HarnessError::io("running initdb"))?;
        check("initdb", &init)?;

        // PostgreSQL cannot pick its own port; one just freed by the OS is taken, and on
        // the rare clash with another process the start is retried on a new one.
        for attempt in 1.. {
            let port = free_port()?;
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
                dir.path().display()
            );
            let log = dir.path().join("postgres.log");
            let start = run_as(as_root, &pg_ctl)
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-w", "-t", "30", "-l"])
                .arg(&log)
                .arg("start")
                .output()
                .map_err(HarnessError::io("running pg_ctl start"))?;
            if start.status.success() {
                return Ok(Self {
                    url: format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres"),
                    own: Some(Own {
                        pg_ctl,
                        data,
                        options,
                        log,
                        as_root,
                        _dir: dir,
                    }),
                });
            }
            if attempt == 3 {
                let server_log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(HarnessError::Command {
                    what: "pg_ctl start".into(),
                    output: format!("{}{server_log}", String::from_utf8_lossy(&start.stderr)),
                });
            }
        }
        unreachable!("the loop returns by its third attempt")
    }

    /// Connection URL of the `postgres` superuser.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server at once (as a crash would); [`Postgres::start_again`] brings it
    /// back on the same port and data. Only for a server of the test's own.
    pub fn stop(&self) -> Result<(), HarnessError> {
        let own = self.own.as_ref().ok_or(HarnessError::NotOwned)?;
        let output = run_as(own.as_root, &own.pg_ctl)
            .arg("-D")
            .arg(&own.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .map_err(HarnessError::io("running pg_ctl stop"))?;
        check("pg_ctl stop", &output)
    }

    /// Starts a stopped server again.
    pub fn start_again(&self) -> Result<(), HarnessError> {
        let own = self.own.as_ref().ok_or(HarnessError::NotOwned)?;
        let output = run_as(own.as_root, &own.pg_ctl)
            .arg("-D")
            .arg(&own.data)
            .args(["-o", &own.options, "-w", "-t", "30", "-l"])
            .arg(&own.log)
            .arg("start")
            .output()
            .map_err(HarnessError::io("running pg_ctl start"))?;
        check("pg_ctl start", &output)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(own) = &self.own {
            let _ = run_as(own.as_root, &own.pg_ctl)
                .arg("-D")
                .arg(&own.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// `program` run as the postgres user when we are root.
fn run_as(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", OS_USER, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn check(what: &str, output: &std::process::Output) -> Result<(), HarnessError> {
    if output.status.success() {
        return Ok(());
    }
    Err(HarnessError::Command {
        what: what.into(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

fn free_port() -> Result<u16, HarnessError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(HarnessError::io("finding a free port"))
}

/// Debian keeps the server binaries outside PATH, under /usr/lib/postgresql/VERSION/bin;
/// newest version first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    dirs.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    dirs.into_iter().map(|(_, dir)| dir).collect()
}
