//! A private PostgreSQL cluster made with `initdb` and run with `pg_ctl`, optionally with
//! TLS from a certificate authority made for it. PostgreSQL refuses to run as root, so when
//! the tests run as root the cluster belongs to, and runs as, the `postgres` user.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::{find_binary, HarnessError};

const INSTALL: &str = "apt-get install -y postgresql";
const OS_USER: &str = "postgres";
/// The non-superuser admin of [`Postgres::admin_url`] and its database.
const ADMIN_ROLE: &str = "cells_admin";
const ADMIN_DATABASE: &str = "cells";

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
    /// The CA that signed the server's certificate, when it serves TLS.
    ca_cert: Option<PathBuf>,
    _dir: TempDir,
}

/// The files of a server's TLS.
struct TlsFiles {
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
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
        Self::start_own(false)
    }

    /// Starts a server that also accepts TLS, with a certificate for `localhost` and
    /// 127.0.0.1 signed by a CA made for it ([`Postgres::ca_cert`]); plain connections
    /// are still accepted. Panics with the reason if it cannot.
    pub fn start_with_tls() -> Self {
        Self::try_start_with_tls()
            .unwrap_or_else(|error| panic!("starting PostgreSQL with TLS: {error}"))
    }

    /// Like [`Postgres::start_with_tls`]. Always a server of the test's own, even with
    /// `CELLBUS_TEST_DATABASE_URL` set: the tests need a CA they know.
    pub fn try_start_with_tls() -> Result<Self, HarnessError> {
        Self::start_own(true)
    }

    fn start_own(tls: bool) -> Result<Self, HarnessError> {
        let (initdb, pg_ctl) = match std::env::var_os("CELLBUS_PG_BIN") {
            Some(dir) => binaries_in(Path::new(&dir))?,
            None => {
                let extra = debian_bin_dirs();
                let initdb = find_binary("initdb", &extra, INSTALL)?;
                let pg_ctl = find_binary("pg_ctl", &extra, INSTALL)?;
                (initdb, pg_ctl)
            }
        };
        Self::start_binaries(initdb, pg_ctl, tls)
    }

    /// Starts a server from the `initdb` and `pg_ctl` in `bin_dir`.
    pub fn start_from(bin_dir: &Path) -> Result<Self, HarnessError> {
        let (initdb, pg_ctl) = binaries_in(bin_dir)?;
        Self::start_binaries(initdb, pg_ctl, false)
    }

    fn start_binaries(initdb: PathBuf, pg_ctl: PathBuf, tls: bool) -> Result<Self, HarnessError> {
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
        let tls = if tls {
            Some(write_certificates(dir.path(), as_root)?)
        } else {
            None
        };

        // PostgreSQL cannot pick its own port; one just freed by the OS is taken, and on
        // the rare clash with another process the start is retried on a new one.
        for attempt in 1.. {
            let port = crate::free_port()?;
            let mut options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
                dir.path().display()
            );
            if let Some(tls) = &tls {
                options.push_str(&format!(
                    " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                    tls.server_cert.display(),
                    tls.server_key.display()
                ));
            }
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
                        ca_cert: tls.map(|tls| tls.ca_cert),
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

    /// The superuser's URL to `database` instead of `postgres`.
    pub fn url_to(&self, database: &str) -> String {
        let (base, _) = self
            .url
            .rsplit_once('/')
            .expect("the harness's URL names a database");
        format!("{base}/{database}")
    }

    /// Host and port of the server, as a pooler in front of it connects.
    pub fn host_port(&self) -> (String, u16) {
        let config: tokio_postgres::Config = self.url.parse().expect("the harness's URL parses");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".into(),
        };
        (host, config.get_ports().first().copied().unwrap_or(5432))
    }

    /// The URL of an admin like Supabase's `postgres` role: `LOGIN CREATEROLE`, not a
    /// superuser, owner of the database `cells` it connects to. Made on first call.
    pub async fn admin_url(&self) -> String {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| panic!("connecting as the superuser: {error}"));
        tokio::spawn(connection);
        let password = format!("{ADMIN_ROLE}-{}", std::process::id());
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&ADMIN_ROLE])
            .await
            .expect("looking up the admin role")
            .is_some();
        if !exists {
            // Two messages: CREATE DATABASE cannot run in the implicit transaction of one.
            for statement in [
                // The verifier, not the password: statements reach the driver's debug log.
                format!(
                    "CREATE ROLE {ADMIN_ROLE} LOGIN CREATEROLE NOSUPERUSER PASSWORD '{}'",
                    postgres_protocol::password::scram_sha_256(password.as_bytes())
                ),
                format!("CREATE DATABASE {ADMIN_DATABASE} OWNER {ADMIN_ROLE}"),
            ] {
                client
                    .batch_execute(&statement)
                    .await
                    .unwrap_or_else(|error| panic!("{statement}: {error:?}"));
            }
        }
        let (host, port) = self.host_port();
        format!("postgres://{ADMIN_ROLE}:{password}@{host}:{port}/{ADMIN_DATABASE}")
    }

    /// The password in [`Postgres::url`], for tests that make sure it is never logged.
    pub fn password(&self) -> &str {
        let url = self.url();
        let credentials = url
            .split_once("://")
            .and_then(|(_, rest)| rest.rsplit_once('@'))
            .map_or("", |(credentials, _)| credentials);
        credentials
            .split_once(':')
            .map_or("", |(_, password)| password)
    }

    /// The PEM file of the CA that signed the server's certificate, for a server started
    /// with [`Postgres::start_with_tls`].
    pub fn ca_cert(&self) -> Option<&Path> {
        self.own.as_ref()?.ca_cert.as_deref()
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

/// The `initdb` and `pg_ctl` in `bin_dir`.
fn binaries_in(bin_dir: &Path) -> Result<(PathBuf, PathBuf), HarnessError> {
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
    Ok((initdb, pg_ctl))
}

/// Makes a CA and a server certificate it signs for `localhost` and 127.0.0.1, and writes
/// them to `dir` as `ca.crt`, `server.crt` and `server.key`.
fn write_certificates(dir: &Path, as_root: bool) -> Result<TlsFiles, HarnessError> {
    let failed = |error: rcgen::Error| HarnessError::Io {
        what: "making the test certificates".into(),
        source: std::io::Error::other(error),
    };
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Cellbus test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca =
        CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(failed)?).map_err(failed)?;

    let mut server =
        CertificateParams::new(["localhost".to_owned(), "127.0.0.1".to_owned()]).map_err(failed)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().map_err(failed)?;
    let server_cert = server.signed_by(&server_key, &ca).map_err(failed)?;

    let files = TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    std::fs::write(&files.ca_cert, ca.pem()).map_err(HarnessError::io("writing ca.crt"))?;
    std::fs::write(&files.server_cert, server_cert.pem())
        .map_err(HarnessError::io("writing server.crt"))?;
    // PostgreSQL refuses a key file that others may read, and one not owned by the user it
    // runs as (unless root owns it).
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&files.server_key)
        .and_then(|mut file| file.write_all(server_key.serialize_pem().as_bytes()))
        .map_err(HarnessError::io("writing server.key"))?;
    if as_root {
        let chown = Command::new("chown")
            .args([OS_USER, &files.server_key.to_string_lossy()])
            .output()
            .map_err(HarnessError::io("running chown"))?;
        check("giving the server key to the postgres user", &chown)?;
    }
    Ok(files)
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn a_tls_server_serves_tls_with_a_private_key_only_it_can_read() {
        let postgres = Postgres::start_with_tls();
        let ca = postgres.ca_cert().expect("a TLS server has a CA");
        let pem = std::fs::read_to_string(ca).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        let key = ca.with_file_name("server.key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // The server still takes plain connections, so this one can ask it.
        let (client, connection) = tokio_postgres::connect(postgres.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        assert_eq!(ssl, "on");
    }

    #[test]
    fn a_plain_server_has_no_ca() {
        assert!(Postgres::start().ca_cert().is_none());
    }
}
