//! Stopping is bounded: `cellbus up` and `cellbus serve` stop on SIGINT or SIGTERM
//! within their drain, also when their nats-server has gone away (draining needs the
//! server; a runtime without one must still stop), and a second signal stops them at once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cellbus_testkit::NatsServer;
use rstest::rstest;

/// Much less than the grace period (30 s) the process would wait for running requests:
/// none is running, and the subscriptions it cannot drain are dropped after 5 s.
const BOUND: Duration = Duration::from_secs(20);

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Starts `cellbus ARGS` on `nats` and waits until a line of its output holds `ready`.
fn start(args: &[&str], nats: &NatsServer, ready: &str, cache: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cellbus"))
        .args(args)
        .current_dir(repo())
        .env("NATS_URL", nats.url())
        .env("CELLBUS_CACHE_DIR", cache)
        .env("CELLBUS_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (send, receive) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let send = send.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
    }
    let mut seen = Vec::new();
    while let Ok(line) = receive.recv_timeout(Duration::from_secs(120)) {
        if line.contains(ready) {
            return child;
        }
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("`cellbus {args:?}` did not get ready: {seen:#?}");
}

fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to a child process we own; no memory is involved.
    #[allow(unsafe_code)]
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal})");
}

/// Waits up to `bound` for the child to exit; how long it took, or `None`.
fn exited_within(child: &mut Child, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < bound {
        if child.try_wait().unwrap().is_some() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[rstest]
#[case::up_on_sigterm(&["up", "examples/echo"], "ready", libc::SIGTERM)]
#[case::up_on_sigint(&["up", "examples/echo"], "ready", libc::SIGINT)]
#[case::serve_on_sigterm(&["serve", "--pool", "p", "--http", "127.0.0.1:0"], "serving", libc::SIGTERM)]
#[case::serve_on_sigint(&["serve", "--pool", "p", "--http", "127.0.0.1:0"], "serving", libc::SIGINT)]
fn a_runtime_whose_nats_server_has_gone_stops_within_its_drain(
    #[case] args: &[&str],
    #[case] ready: &str,
    #[case] stop: i32,
) {
    let mut nats = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let mut child = start(args, &nats, ready, cache.path());
    nats.kill().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, stop);
    let took = exited_within(&mut child, BOUND);
    if took.is_none() {
        let _ = child.kill();
    }
    let took =
        took.unwrap_or_else(|| panic!("`cellbus {args:?}` still runs {BOUND:?} after the signal"));
    println!("`cellbus {args:?}` stopped {took:?} after the signal");
}

#[test]
fn a_second_signal_stops_a_draining_runtime_at_once() {
    let mut nats = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    let mut child = start(&["up", "examples/echo"], &nats, "ready", cache.path());
    nats.kill().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGINT);
    // Draining waits for the server for a while; a second Ctrl-C does not.
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGINT);
    assert!(
        exited_within(&mut child, Duration::from_secs(3)).is_some(),
        "a second Ctrl-C did not stop `cellbus up`"
    );
}
