//! No secret is ever printed: `cellbus up`, `cellbus call` and `--help`, run as the
//! binary with debug logs, against a nats-server that requires a password and with
//! database URLs that carry one, including connections that fail, print neither password.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cellbus_testkit::NatsServer;

const NATS_PASSWORD: &str = "nats-pw-0d1f2e";
const DB_PASSWORD: &str = "db-pw-7c6b5a";

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn cellbus(cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cellbus"));
    command
        .current_dir(repo())
        .env_remove("NATS_URL")
        .env("CELLBUS_CACHE_DIR", cache)
        .env("RUST_LOG", "debug");
    command
}

/// The URL of `nats` with the user `cell` and `password`.
fn with_password(nats: &NatsServer, password: &str) -> String {
    nats.url()
        .replace("nats://", &format!("nats://cell:{password}@"))
}

/// A database URL whose server is down (nothing listens on port 1).
fn down_database() -> String {
    format!("postgres://admin:{DB_PASSWORD}@127.0.0.1:1/postgres?sslmode=disable&password={DB_PASSWORD}")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [NATS_PASSWORD, DB_PASSWORD] {
        assert!(!text.contains(secret), "{what} printed {secret}:\n{text}");
    }
}

/// Runs `command` until it exits or `limit` passes (then it is killed); all it printed.
fn run_for(mut command: Command, limit: Duration) -> String {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().unwrap();
    format!("{}{}", out.join().unwrap(), err.join().unwrap())
}

#[test]
fn up_and_call_print_no_password_of_nats_or_the_database() {
    let cache = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_with_args(&["--user", "cell", "--pass", NATS_PASSWORD]);
    let url = with_password(&nats, NATS_PASSWORD);

    // Up and serving, with a database URL it never needs (echo has no database).
    let mut up = cellbus(cache.path())
        .args(["up", "examples/echo"])
        .env("NATS_URL", &url)
        .env("CELLBUS_DATABASE_URL", down_database())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(up.stdout.take().unwrap());
    let mut stderr = up.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    let mut printed = Vec::new();
    while !printed
        .last()
        .is_some_and(|l: &String| l.starts_with("ready"))
    {
        let line = receive
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("`cellbus up` did not get ready: {printed:?}"));
        printed.push(line);
    }
    let port = nats.url().rsplit(':').next().unwrap();
    assert_eq!(
        printed[0],
        format!("NATS    nats://cell:***@127.0.0.1:{port}")
    );

    // The password in the URL logs `call` in; a wrong one and a refused port fail.
    let call = |url: &str| {
        cellbus(cache.path())
            .args(["call", "echo.say", r#"{"text":"hi"}"#])
            .env("NATS_URL", url)
            .output()
            .unwrap()
    };
    let served = call(&url);
    assert!(served.status.success(), "{}", text(&served));
    let wrong = call(&with_password(&nats, "wrong-pw"));
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains(&format!(
            "cellbus: connecting to NATS at nats://cell:***@127.0.0.1:{port}: "
        )),
        "{}",
        text(&wrong)
    );
    assert!(!text(&wrong).contains("wrong-pw"), "{}", text(&wrong));
    let refused = call(&format!("nats://cell:{NATS_PASSWORD}@127.0.0.1:1"));
    assert!(
        text(&refused).contains("cellbus: connecting to NATS at nats://cell:***@127.0.0.1:1: "),
        "{}",
        text(&refused)
    );

    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    up.wait().unwrap();
    let all = format!(
        "{}\n{}\n{}\n{}",
        printed.join("\n"),
        logs.join().unwrap(),
        text(&served),
        text(&refused)
    );
    assert!(all.contains("DEBUG"), "debug logs were captured: {all}");
    assert_no_secret("up and call", &all);
}

#[test]
fn up_failing_to_reach_nats_or_the_database_prints_no_password() {
    let cache = tempfile::tempdir().unwrap();
    // NATS refused: up retries in the background until it gives up or is stopped.
    let mut nats_down = cellbus(cache.path());
    nats_down.args(["up", "examples/echo"]).env(
        "NATS_URL",
        format!("nats://cell:{NATS_PASSWORD}@127.0.0.1:1"),
    );
    let printed = run_for(nats_down, Duration::from_secs(8));
    assert!(
        printed.contains("connection attempt failed"),
        "the failed attempts were logged: {printed}"
    );
    assert_no_secret("up with NATS down", &printed);

    // The database down: up stops, saying where it could not connect.
    let nats = NatsServer::start_with_args(&["--user", "cell", "--pass", NATS_PASSWORD]);
    let mut database_down = cellbus(cache.path());
    database_down
        .args(["up", "examples/visits"])
        .env("NATS_URL", with_password(&nats, NATS_PASSWORD))
        .env("CELLBUS_DATABASE_URL", down_database());
    let printed = run_for(database_down, Duration::from_secs(120));
    assert!(
        printed.contains(
            "cellbus: provisioning the database of Cell visits: connecting to the admin database at 127.0.0.1:1/postgres"
        ),
        "{printed}"
    );
    assert_no_secret("up with the database down", &printed);
}

#[test]
fn help_shows_no_url_from_the_environment() {
    let cache = tempfile::tempdir().unwrap();
    for command in [["up", "--help"], ["call", "--help"], ["serve", "--help"]] {
        let output = cellbus(cache.path())
            .args(command)
            .env("NATS_URL", format!("nats://cell:{NATS_PASSWORD}@nats:4222"))
            .env("CELLBUS_DATABASE_URL", down_database())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        assert_no_secret(&command.join(" "), &text(&output));
    }
}
