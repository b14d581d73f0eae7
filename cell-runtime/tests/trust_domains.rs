//! One trust domain per process cell, tried by a hostile process cell
//! (tests/process_cells/attacker.py) against a real `cellbus up`, three times: with the
//! runtime as root, as `cellbus up` often runs, and as a pool's pods run it — uid 65532
//! holding only CAP_SETUID and CAP_SETGID (through `setpriv`), once as ambient
//! capabilities and once as the process image gives them, file capabilities on a copy of
//! `cellbus`. The attacker is told where
//! everything is (the runtime's pid, a victim's pid, home and executable, the cache, a
//! runtime-only token, the NATS port) and tries to reach each; every attempt fails, the
//! victims keep answering correctly, a cell granted the network reaches it, and no process
//! of any cell is left once the runtime is SIGKILLed.

#![cfg(target_os = "linux")]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellbus_contracts::wire::{Reply, Request};
use cellbus_runtime::process::{CELL_UIDS, FIRST_CELL_UID};
use cellbus_testkit::NatsServer;
use serde_json::{json, Value};
use support::{as_the_pods_user, marker, processes_marked, Grant};

/// Every attempt the attacker makes; each must be blocked.
const ATTEMPTS: &[&str] = &[
    "environ",
    "runtime-memory",
    "signal-runtime",
    "stop-supervisor",
    "kill-victim",
    "victim-environ",
    "ptrace-victim",
    "write-cache",
    "list-cache",
    "swap-executable",
    "replace-executable",
    "read-executable",
    "token",
    "victim-home",
    "write-victim-home",
    "write-tmp",
    "write-dev-shm",
    "list-tmp",
    "nats",
    "udp",
    "netlink",
    "abstract-socket",
    "unix-socket",
    "unix-datagram",
    "setuid-root",
    "user-namespace",
    "io-uring",
    "leave-group",
];

/// Held by each runtime-starting test of this binary: the attacker's thread flood is
/// enough load for one runtime at a time on two cores.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a confined cell may do.
const CONTROLS: &[&str] = &["own-home", "own-tmp"];

/// A process cell fetched by digest: echoes what it gets, one thread per request.
const ECHO_EXECUTABLE: &str = r#"#!/usr/bin/env python3
import json, sys, threading
lock = threading.Lock()
def answer(request):
    with lock:
        sys.stdout.write(json.dumps({"id": request["id"], "ok": True, "payload": request["payload"]}) + "\n")
        sys.stdout.flush()
for line in sys.stdin:
    threading.Thread(target=answer, args=(json.loads(line),)).start()
"#;

fn cell_script(name: &str) -> String {
    format!("{}/tests/process_cells/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The directory `cellbus up` serves: a process pool with two victims (a command, and an
/// executable by digest), the attacker, and the attacker again granted the network.
fn manifests(dir: &Path) {
    std::fs::write(dir.join("echo-cell.py"), ECHO_EXECUTABLE).unwrap();
    let digest = cellbus_control::digest_of(ECHO_EXECUTABLE.as_bytes());
    let verbs = |names: &[&str]| -> String {
        let verbs: Vec<String> = names
            .iter()
            .map(|n| format!("{{name: {n}, timeoutMs: 20000}}"))
            .collect();
        format!("[{}]", verbs.join(", "))
    };
    let attacker = cell_script("attacker.py");
    let victim = cell_script("cell.py");
    let yaml = format!(
        "apiVersion: cellbus.io/v1alpha1\nkind: CellPool\nmetadata: {{name: processes}}\n\
         spec: {{runtime: process}}\n\
         ---\napiVersion: cellbus.io/v1alpha1\nkind: Cell\nmetadata: {{name: victim}}\n\
         spec:\n  service: victim\n  runtime: process\n  verbs: {victim_verbs}\n\
         \x20 module: {{command: [python3, {victim}, well-behaved, {victim_mark}]}}\n\
         \x20 env: [{{name: SECRET, value: the-victims-secret}}]\n\
         ---\napiVersion: cellbus.io/v1alpha1\nkind: Cell\nmetadata: {{name: binary}}\n\
         spec:\n  service: binary\n  runtime: process\n  verbs: [{{name: echo}}]\n  module: {{digest: \"{digest}\"}}\n\
         ---\napiVersion: cellbus.io/v1alpha1\nkind: Cell\nmetadata: {{name: attacker}}\n\
         spec:\n  service: attacker\n  runtime: process\n  verbs: {attacker_verbs}\n\
         \x20 module: {{command: [python3, {attacker}]}}\n\
         ---\napiVersion: cellbus.io/v1alpha1\nkind: Cell\nmetadata: {{name: networked}}\n\
         spec:\n  service: networked\n  runtime: process\n  verbs: {attacker_verbs}\n\
         \x20 module: {{command: [python3, {attacker}]}}\n\
         \x20 capabilities: {{network: {{egress: true}}}}\n",
        victim_verbs = verbs(&["echo", "env"]),
        attacker_verbs = verbs(&["status", "attempt", "exhaust", "leave-behind"]),
        victim_mark = marker("victim"),
    );
    std::fs::write(dir.join("cells.yaml"), yaml).unwrap();
}

enum As {
    Root,
    /// uid 65532 with CAP_SETUID and CAP_SETGID (ambient), nothing else.
    PodUser,
    /// uid 65532 running a copy of `cellbus` with the file capabilities of the process
    /// image (`cap_setuid,cap_setgid=p`), CAP_SETUID and CAP_SETGID in its bounding set:
    /// what a process pool's pod does.
    PodImage,
}

/// A copy of `cellbus` with the process image's file capabilities, somewhere the pods'
/// user may run it.
fn cellbus_with_file_capabilities() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("file-capabilities");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join(format!("cellbus-{}", std::process::id()));
    std::fs::copy(env!("CARGO_BIN_EXE_cellbus"), &copy).unwrap();
    let setcap = ["setcap", "/usr/sbin/setcap", "/sbin/setcap"]
        .into_iter()
        .find(|tool| Command::new(tool).arg("-h").output().is_ok())
        .expect("setcap is missing: apt-get install libcap2-bin (scripts/setup does)");
    let set = Command::new(setcap)
        .args(["cap_setuid,cap_setgid=p"])
        .arg(&copy)
        .status()
        .unwrap();
    assert!(set.success(), "setcap on {}", copy.display());
    copy
}

struct Runtime {
    child: Child,
    uid: u32,
    logs: Arc<Mutex<String>>,
}

impl Drop for Runtime {
    /// A failed test leaves no runtime behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_runtime(who: &As, dir: &Path, cache: &Path, nats: &NatsServer) -> Runtime {
    let cellbus = Path::new(env!("CARGO_BIN_EXE_cellbus"));
    let dirs = [dir, cache];
    let (mut command, uid) = match who {
        As::Root => (Command::new(cellbus), 0),
        As::PodUser => (as_the_pods_user(cellbus, &dirs, Grant::Ambient), 65532),
        As::PodImage => {
            let program = cellbus_with_file_capabilities();
            let command = as_the_pods_user(&program, &dirs, Grant::FileCapabilities);
            (command, 65532)
        }
    };
    command
        .arg("up")
        .arg(dir)
        .env("NATS_URL", nats.url())
        .env("CELLBUS_CACHE_DIR", cache)
        .env("NATS_TOKEN", "the-runtimes-secret")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let logs = Arc::new(Mutex::new(String::new()));
    // Killed when dropped, a failed start included.
    let mut runtime = Runtime {
        child: command.spawn().unwrap(),
        uid,
        logs: logs.clone(),
    };
    {
        let logs = logs.clone();
        let stderr = runtime.child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = logs.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
    }
    let stdout = BufReader::new(runtime.child.stdout.take().unwrap());
    let until = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    for line in stdout.lines().map_while(Result::ok) {
        if line.starts_with("ready") {
            return runtime;
        }
        seen.push(line);
        assert!(Instant::now() < until, "`cellbus up` not ready: {seen:?}");
    }
    panic!("`cellbus up` stopped: {seen:?}\n{}", logs.lock().unwrap());
}

async fn call(client: &async_nats::Client, service: &str, verb: &str, payload: Value) -> Value {
    let request = Request::new(service, verb, payload);
    let message = client
        .request(
            format!("cbs.{service}.{verb}"),
            serde_json::to_vec(&request).unwrap().into(),
        )
        .await
        .unwrap_or_else(|e| panic!("{service}.{verb}: {e}"));
    match serde_json::from_slice::<Reply>(&message.payload).unwrap() {
        Reply::Ok(ok) => ok.payload,
        Reply::Err(error) => panic!("{service}.{verb} answered {:?}", error.error),
    }
}

/// Fields of /proc/PID/status.
fn status(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn real_uid(pid: u32) -> Option<u32> {
    status(pid)
        .get("Uid")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

/// The cell process (not its supervisor) among processes marked `mark`.
fn cell_process(mark: &str) -> u32 {
    *processes_marked(mark)
        .iter()
        .find(|pid| cmdline(**pid).get(1).map(String::as_str) != Some("sandbox"))
        .unwrap_or_else(|| panic!("no cell process marked {mark}"))
}

/// Processes running as the user of a cell of the runtime whose block holds `uid`.
fn cell_processes(uid: u32) -> Vec<(u32, u32, Vec<String>)> {
    let block = (uid - FIRST_CELL_UID) / CELL_UIDS;
    let first = FIRST_CELL_UID + block * CELL_UIDS;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|pid| Some((pid, real_uid(pid)?)))
        .filter(|(_, uid)| (first..first + CELL_UIDS).contains(uid))
        .map(|(pid, uid)| (pid, uid, cmdline(pid)))
        .collect()
}

async fn hostile_cells_stay_in_their_domains(who: As) {
    let nats = NatsServer::start();
    let port: u16 = nats.url().rsplit(':').next().unwrap().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    manifests(dir.path());
    let cache = tempfile::tempdir().unwrap();
    // The pod's service-account token: the runtime's alone.
    let token = cache.path().join("token");
    std::fs::write(&token, "the-service-account-token").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let abstract_name = format!("cellbus-test-{}-abstract", std::process::id());
    let _alone = ALONE.lock().await;
    let _listener = {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&address).unwrap()
    };
    // A Unix socket anyone may connect to, as a machine's database or daemon has.
    let sockets = tempfile::tempdir().unwrap();
    std::fs::set_permissions(sockets.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let unix_socket = sockets.path().join("daemon.sock");
    let _daemon = std::os::unix::net::UnixListener::bind(&unix_socket).unwrap();
    std::fs::set_permissions(&unix_socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let unix_datagram = sockets.path().join("syslog.sock");
    let _syslog = std::os::unix::net::UnixDatagram::bind(&unix_datagram).unwrap();
    std::fs::set_permissions(&unix_datagram, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut runtime = start_runtime(&who, dir.path(), cache.path(), &nats);
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(nats.url())
        .await
        .unwrap();

    // Start every cell's process.
    assert_eq!(call(&client, "victim", "echo", json!(0)).await, json!(0));
    assert_eq!(call(&client, "binary", "echo", json!(0)).await, json!(0));
    let attacker = call(&client, "attacker", "status", json!({})).await;
    let networked = call(&client, "networked", "status", json!({})).await;
    let victim = cell_process(&marker("victim"));
    let victim_uid = real_uid(victim).unwrap();
    let victim_home = std::fs::read_link(format!("/proc/{victim}/cwd")).unwrap();
    let executable = cell_processes(victim_uid)
        .into_iter()
        .flat_map(|(_, _, args)| args)
        .find(|arg| arg.contains("/bin/sha256-"))
        .expect("the binary cell runs its executable by digest");
    let logs = || runtime.logs.lock().unwrap().clone();

    // Users of their own, no capabilities, and nothing of the runtime's environment.
    let runtime_uid = runtime.uid;
    let uids: Vec<u64> = [&attacker, &networked]
        .iter()
        .map(|s| s["uid"].as_u64().unwrap())
        .collect();
    for (uid, other) in [
        (uids[0], u64::from(runtime_uid)),
        (uids[0], u64::from(victim_uid)),
        (uids[0], uids[1]),
        (u64::from(victim_uid), u64::from(runtime_uid)),
    ] {
        assert_ne!(uid, other, "two domains share a user: {attacker}");
    }
    assert!(uids[0] >= u64::from(FIRST_CELL_UID), "{attacker}");
    assert_eq!(attacker["gid"], attacker["uid"], "{attacker}");
    assert_eq!(attacker["groups"], json!([]), "{attacker}");
    for field in ["capEff", "capPrm", "capInh", "capAmb"] {
        assert_eq!(attacker[field], json!("0000000000000000"), "{attacker}");
    }
    assert_eq!(attacker["noNewPrivs"], json!("1"), "{attacker}");
    assert_eq!(
        attacker["env"],
        json!(["HOME", "LANG", "PATH", "PYTHONPATH", "TMPDIR"]),
        "{attacker}"
    );

    // Every attempt, made by the attacker and by the cell granted the network.
    let hints = json!({
        "runtime": runtime.child.id(),
        "victim": victim,
        "victimHome": victim_home,
        "cache": cache.path(),
        "executable": executable,
        "token": token,
        "natsPort": port,
        "abstract": abstract_name,
        "unixSocket": unix_socket,
        "unixDatagram": unix_datagram,
    });
    let mut everything: Vec<&str> = ATTEMPTS.to_vec();
    everything.extend(CONTROLS);
    let mut payload = hints.clone();
    payload["attempts"] = json!(everything);
    for service in ["attacker", "networked"] {
        let outcomes = call(&client, service, "attempt", payload.clone()).await;
        for name in ATTEMPTS {
            let outcome = &outcomes[name];
            // The network is the networked cell's to use (netlink too, which the C
            // library's resolver asks for its addresses, and the machine's Unix
            // sockets); nothing else is.
            let may = service == "networked"
                && matches!(
                    *name,
                    "nats" | "udp" | "netlink" | "unix-socket" | "unix-datagram"
                );
            assert_eq!(
                outcome["blocked"],
                json!(!may),
                "{service}: {name} {outcome}\n{}",
                logs()
            );
        }
        for name in CONTROLS {
            assert_eq!(outcomes[name]["blocked"], json!(false), "{service}: {name}");
        }
    }
    // The runtime, its files and the victims are untouched.
    assert_eq!(
        status(runtime.child.id())["State"].chars().next(),
        Some('S')
    );
    assert!(!cache.path().join("planted").exists());
    assert!(!victim_home.join("planted").exists());
    assert!(!Path::new("/tmp/cellbus-attacker-was-here").exists());
    assert_eq!(
        std::fs::read(&executable).unwrap(),
        ECHO_EXECUTABLE.as_bytes()
    );

    // Starving the victims: the attacker holds every thread its user may start.
    let exhausted = tokio::time::Instant::now();
    let exhaust = {
        let client = client.clone();
        tokio::spawn(
            async move { call(&client, "attacker", "exhaust", json!({"seconds": 8})).await },
        )
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The victims answer correctly throughout, each request on a thread of its own.
    for n in 1..=20 {
        assert_eq!(
            call(&client, "victim", "echo", json!({"n": n})).await,
            json!({"n": n})
        );
        assert_eq!(
            call(&client, "binary", "echo", json!({"n": n})).await,
            json!({"n": n})
        );
    }
    let threads = exhaust.await.unwrap()["threads"].as_u64().unwrap();
    println!("the attacker held {threads} threads while both victims answered 20 requests each");
    assert!(
        (100..100_000).contains(&threads),
        "the attacker started {threads} threads"
    );
    let env = call(&client, "victim", "env", json!({})).await;
    assert_eq!(env["SECRET"], json!("the-victims-secret"));
    // Until its threads let go, the attacker cannot start one to take a request.
    tokio::time::sleep_until(exhausted + Duration::from_secs(10)).await;

    // An executable changed behind the runtime's back (here by root) is not run again.
    std::fs::set_permissions(&executable, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&executable, format!("{ECHO_EXECUTABLE}# changed\n")).unwrap();
    let binary = cell_process(&executable);
    // SAFETY: kill(2) on the binary cell's process, which this test owns the fate of.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(binary as i32, libc::SIGKILL)
    };
    let until = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        assert!(Instant::now() < until, "the changed executable was run");
        let request = Request::new("binary", "echo", json!(1));
        let reply = client
            .request(
                "cbs.binary.echo",
                serde_json::to_vec(&request).unwrap().into(),
            )
            .await
            .unwrap();
        match serde_json::from_slice::<Reply>(&reply.payload).unwrap() {
            Reply::Err(error) if error.error.message.contains("it is not run") => {
                break error.error
            }
            // Answered by the process before it died, or refused during the backoff.
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(refused.code, cellbus_contracts::wire::ErrorCode::CellFailed);
    assert!(refused.message.contains("has digest"), "{refused:?}");

    // Processes that stop themselves or try to leave: none outlives the runtime.
    let mark = marker("attacker-leftover");
    call(&client, "attacker", "leave-behind", json!({"mark": mark})).await;
    let until = Instant::now() + Duration::from_secs(10);
    while processes_marked(&mark).len() < 2 {
        assert!(Instant::now() < until, "the attacker left nothing behind");
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.child.kill().unwrap();
    runtime.child.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !cell_processes(victim_uid).is_empty() {
        assert!(
            Instant::now() < until,
            "cell processes outlived the runtime: {:?}",
            cell_processes(victim_uid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file("/tmp/cellbus-attacker-was-here");
}

fn require_root() {
    assert!(
        support::root(),
        "run as root: this test starts the runtime as root and as uid 65532 through setpriv"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_cells_are_apart_from_each_other_and_the_runtime_as_root() {
    require_root();
    hostile_cells_stay_in_their_domains(As::Root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_cells_are_apart_from_each_other_and_the_runtime_as_the_pods_user() {
    require_root();
    hostile_cells_stay_in_their_domains(As::PodUser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_cells_are_apart_from_each_other_and_the_runtime_with_the_images_file_capabilities()
{
    require_root();
    hostile_cells_stay_in_their_domains(As::PodImage).await;
}

/// The pod's user without CAP_SETUID and CAP_SETGID: process cells are refused with a
/// message saying what the runtime needs, never run under the runtime's own user.
#[test]
fn without_the_capabilities_process_cells_are_refused() {
    require_root();
    let _alone = ALONE.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    manifests(dir.path());
    let nats = NatsServer::start();
    let cellbus = Path::new(env!("CARGO_BIN_EXE_cellbus"));
    let mut runtime = as_the_pods_user(cellbus, &[dir.path(), cache.path()], Grant::Nothing)
        .arg("up")
        .arg(dir.path())
        .env("NATS_URL", nats.url())
        .env("CELLBUS_CACHE_DIR", cache.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(runtime.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if line.starts_with("ready") {
            break;
        }
        lines.push(line);
    }
    runtime.kill().unwrap();
    runtime.wait().unwrap();
    let failed: Vec<&String> = lines.iter().filter(|l| l.starts_with("failed")).collect();
    assert_eq!(failed.len(), 4, "{lines:?}");
    for line in failed {
        assert!(
            line.contains("process cells run under users of their own")
                && line.contains("CAP_SETUID and CAP_SETGID"),
            "{line}"
        );
    }
}

/// A Cell setting a loader variable is refused by `cellbus check` (and so `cellbus up` and
/// the operator, which share the check) naming the field.
#[test]
fn a_loader_variable_in_a_cells_env_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cell.yaml"),
        "apiVersion: cellbus.io/v1alpha1\nkind: Cell\nmetadata: {name: preload}\n\
         spec:\n  service: preload\n  verbs: [{name: go}]\n  module: {command: [/bin/cat]}\n\
         \x20 env: [{name: LD_PRELOAD, value: /tmp/evil.so}]\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cellbus"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("spec.env[0].name") && text.contains("LD_PRELOAD"),
        "{text}"
    );
}

/// An assignment that did not pass the checks (written to the bucket by hand) still gets
/// no loader variable into a cell: the runtime refuses the cell, naming the variable, and
/// serves the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_refuses_a_loader_variable_that_reached_the_assignment() {
    require_root();
    let bus = support::Bus::start().await;
    let verbs = json!([{"name": "echo"}]);
    let preload = support::TestCell::process(
        "preload",
        "well-behaved",
        verbs.clone(),
        json!({"env": [{"name": "LD_PRELOAD", "value": "/tmp/evil.so"}]}),
    );
    let fine = support::TestCell::process("fine", "well-behaved", verbs, json!({}));
    let server = bus.deploy(&[preload, fine]).await;
    let states = server.states();
    let refused = states.iter().find(|s| s.service == "preload").unwrap();
    assert_eq!(refused.state, cellbus_contracts::status::LoadState::Failed);
    assert!(
        refused
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("`LD_PRELOAD` steers the dynamic loader")),
        "{refused:?}"
    );
    assert_eq!(bus.call("fine", "echo", json!(1)).await.unwrap(), json!(1));
    server.shutdown().await;
}
