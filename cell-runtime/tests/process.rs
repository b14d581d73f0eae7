//! Process cells through the bus, as real processes in the Linux sandbox: JSON lines in
//! and out with several requests in flight, typed errors, and hostile processes — garbage,
//! a 100 MB line, a closed stdout, silence, an instant exit, a CPU spinner, a memory hog,
//! a fork bomb (in tests/process_fork_bomb.rs, alone: it loads the machine), a grandchild
//! left behind, an attempt to leave the process group — each contained with a typed error while another cell keeps serving, and no process of a
//! cell outliving its runtime.

#![cfg(target_os = "linux")]

mod support;

use std::time::{Duration, Instant};

use cellbus_contracts::wire::ErrorCode;
use serde_json::{json, Value};
use support::*;

fn verbs(timeout_ms: u32) -> Value {
    json!(["echo", "sleep", "fail", "log", "escape", "env", "go"]
        .iter()
        .map(|name| json!({"name": name, "timeoutMs": timeout_ms}))
        .collect::<Vec<_>>())
}

/// The runtime's logs (the cells' stderr among them) in the test's output.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
}

fn well_behaved(service: &str) -> TestCell {
    TestCell::process(
        service,
        "well-behaved",
        verbs(5000),
        json!({"env": [{"name": "GREETING", "value": "hello"}]}),
    )
}

fn hostile(service: &str, mode: &str, extra: Value) -> TestCell {
    TestCell::process(service, mode, verbs(2000), extra)
}

/// Waits until `condition` holds, for at most `seconds`.
async fn eventually(seconds: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(seconds);
    while !condition() {
        assert!(
            Instant::now() < until,
            "{what} did not happen in {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_cell_answers_many_requests_at_once_matched_by_id() {
    logs();
    let bus = Bus::start().await;
    let server = bus.deploy(&[well_behaved("lines")]).await;

    assert_eq!(
        bus.call("lines", "echo", json!({"a": 1})).await.unwrap(),
        json!({"a": 1})
    );
    // Slow ones first: the replies come back in another order than the requests.
    let calls: Vec<_> = (0..8)
        .map(|i| bus.spawn_call("lines", "sleep", json!({"ms": 400 - i * 50, "i": i})))
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let payload = call.await.unwrap().into_result().unwrap();
        assert_eq!(payload["i"], json!(i));
    }
    // A cell's own error keeps its code and details.
    let error = bus.call("lines", "fail", json!({})).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::BadRequest);
    assert_eq!(error.details, Some(json!({"why": "asked"})));
    // Only the Cell's environment: none of the runtime's. PYTHONPATH leads to the
    // runtime's copy of the Python SDK.
    let env = bus.call("lines", "env", json!({})).await.unwrap();
    assert_eq!(env["GREETING"], json!("hello"));
    let sdk = bus
        .node
        .shared
        .processes
        .files()
        .unwrap()
        .python_sdk
        .clone()
        .unwrap();
    assert_eq!(env["PYTHONPATH"], json!(sdk.display().to_string()));
    assert!(sdk.join("cellbus_cell.py").is_file());
    let mut names: Vec<&String> = env.as_object().unwrap().keys().collect();
    names.sort();
    assert_eq!(
        names,
        ["GREETING", "HOME", "LANG", "PATH", "PYTHONPATH", "TMPDIR"],
        "{env}"
    );
    // The sandbox refuses to let it leave its process group.
    assert_eq!(
        bus.call("lines", "escape", json!({})).await.unwrap(),
        json!({"escaped": false})
    );
    bus.call("lines", "log", json!({})).await.unwrap();

    server.shutdown().await;
    eventually(10, "the process stopping with its pool", || {
        processes_marked(&marker("lines")).is_empty()
    })
    .await;
}

/// Each hostile cell is answered with the code it earns, while `lines` keeps answering,
/// and is started again afterwards.
#[rstest::rstest]
#[case::garbage("garbage", ErrorCode::CellFailed, "not a reply")]
#[case::a_100_mb_line("huge-line", ErrorCode::CellFailed, "longer than")]
#[case::closed_stdout("close-stdout", ErrorCode::CellFailed, "closed its stdout")]
#[case::silence("silent", ErrorCode::Timeout, "deadline")]
#[case::cpu_spinner("spin", ErrorCode::Timeout, "deadline")]
#[case::memory_hog("memory-hog", ErrorCode::CellFailed, "exited")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_process_is_contained_with_a_typed_error(
    #[case] mode: &str,
    #[case] code: ErrorCode,
    #[case] message: &str,
) {
    logs();
    let bus = Bus::start().await;
    let service = format!("h-{mode}");
    let server = bus
        .deploy(&[
            well_behaved("lines"),
            hostile(&service, mode, json!({"limits": {"memory": "256Mi"}})),
        ])
        .await;

    let started = Instant::now();
    let error = bus.call(&service, "go", json!({})).await.unwrap_err();
    assert_eq!(error.code, code, "{error:?}");
    assert!(error.message.contains(message), "{error:?}");
    // Within the verb's 2 s deadline, plus the time to stop it.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        bus.call("lines", "echo", json!({"still": "here"}))
            .await
            .unwrap(),
        json!({"still": "here"})
    );
    // Everything it started is gone, forks included.
    eventually(10, "the hostile process group dying", || {
        processes_marked(&marker(&service)).is_empty()
    })
    .await;
    // It is started again for the next request, which it spoils again.
    let again = bus.call(&service, "go", json!({})).await.unwrap_err();
    assert!(
        again.code == code || again.code == ErrorCode::Unavailable,
        "{again:?}"
    );

    server.shutdown().await;
    eventually(10, "every process stopping with the pool", || {
        processes_marked(&marker(&service)).is_empty()
            && processes_marked(&marker("lines")).is_empty()
    })
    .await;
}

/// Where the runtime's cgroup is delegated (here, a directory laid out like one: this
/// machine's controllers belong to cgroup v1), each process gets a leaf with its cell's
/// limits, and its sandbox joins that leaf before the cell starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_runs_in_a_cgroup_leaf_holding_its_limits() {
    logs();
    let bus = Bus::start().await;
    let limits = json!({"limits": {"memory": "64Mi", "cpu": "250m"}});
    let server = bus
        .deploy(&[hostile("leafy", "well-behaved", limits)])
        .await;
    assert_eq!(bus.call("leafy", "echo", json!(1)).await.unwrap(), json!(1));
    let cgroup = bus.cache.path().join("cgroup");
    let read = |file: &str| std::fs::read_to_string(cgroup.join(file)).unwrap();
    // The runtime moved itself out first, and handed the controllers down.
    assert_eq!(read("runtime/cgroup.procs"), std::process::id().to_string());
    assert_eq!(read("cgroup.subtree_control"), "+memory +cpu +pids");
    assert_eq!(read("cell-leafy-1/memory.max"), (64u64 << 20).to_string());
    assert_eq!(read("cell-leafy-1/memory.oom.group"), "1");
    assert_eq!(read("cell-leafy-1/cpu.max"), "25000 100000");
    assert_eq!(read("cell-leafy-1/pids.max"), "1024");
    // The process in the leaf is the cell's sandbox, told which leaf it is in.
    let pid = read("cell-leafy-1/cgroup.procs");
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let command: Vec<String> = command
        .split(|b| *b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    assert_eq!(command[1], "sandbox", "{command:?}");
    let leaf = cgroup.join("cell-leafy-1").display().to_string();
    assert!(
        command
            .windows(2)
            .any(|w| w[0] == "--cgroup" && w[1] == leaf),
        "{command:?}"
    );
    assert!(
        command
            .windows(2)
            .any(|w| w[0] == "--cpu-millis" && w[1] == "250"),
        "{command:?}"
    );

    // A process killed for a missed deadline is started again in a new leaf.
    let error = bus
        .call("leafy", "sleep", json!({"ms": 5000}))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::Timeout, "{error:?}");
    assert_eq!(bus.call("leafy", "echo", json!(2)).await.unwrap(), json!(2));
    assert_ne!(read("cell-leafy-2/cgroup.procs"), pid);
    server.shutdown().await;
}

/// The kernel enforcing the leaves: only where a delegated cgroup v2 exists, which is not
/// on the machines .ci/run runs on (a hybrid hierarchy with the controllers on v1). The
/// `cgroup-v2` job of .github/workflows/ci.yml makes one, moves the test into it and runs
/// this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a delegated cgroup v2 named by CELLBUS_TEST_CGROUP (the cgroup-v2 job in ci.yml)"]
async fn a_delegated_cgroup_holds_a_cells_processes_together() {
    logs();
    let dir = std::path::PathBuf::from(std::env::var("CELLBUS_TEST_CGROUP").expect(
        "CELLBUS_TEST_CGROUP must name a cgroup v2 directory delegated to this test and holding it",
    ));
    let mut bus = Bus::start().await;
    bus.node.shared.processes.cgroups = cellbus_runtime::process::CellCgroups::delegated(&dir);
    let limits = json!({"limits": {"memory": "64Mi", "cpu": "250m"}});
    let server = bus
        .deploy(&[
            TestCell::process("held", "well-behaved", verbs(10_000), limits.clone()),
            TestCell::process("hog", "forked-hog", verbs(10_000), limits),
        ])
        .await;
    assert_eq!(bus.call("held", "echo", json!(1)).await.unwrap(), json!(1));
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    // The runtime took the cgroup over, and the kernel holds the leaf to the cell's limits.
    assert!(read("cgroup.subtree_control").contains("memory"));
    assert!(read("runtime/cgroup.procs").contains(&std::process::id().to_string()));
    assert_eq!(
        read("cell-held-1/memory.max").trim(),
        (64u64 << 20).to_string()
    );
    assert_eq!(read("cell-held-1/cpu.max").trim(), "25000 100000");
    assert_eq!(read("cell-held-1/pids.max").trim(), "1024");
    let pid = read("cell-held-1/cgroup.procs");
    let pid = pid
        .split_whitespace()
        .next()
        .expect("a process in the leaf");
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        membership.trim_end().ends_with("/cell-held-1"),
        "{membership}"
    );

    // Eight processes under their own address-space limits, over the cell's memory.max
    // together: the kernel ends the whole leaf, and the cell answers cell_failed.
    let error = bus.call("hog", "go", json!({})).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::CellFailed, "{error:?}");
    assert!(error.message.contains("signal 9"), "{error:?}");
    assert_eq!(bus.call("held", "echo", json!(2)).await.unwrap(), json!(2));

    server.shutdown().await;
    eventually(10, "every cell's leaf removed", || {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .all(|entry| !entry.file_name().to_string_lossy().starts_with("cell-"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_at_once_is_restarted_with_a_backoff() {
    logs();
    let bus = Bus::start().await;
    let server = bus
        .deploy(&[hostile("quitter", "exit-at-once", json!({}))])
        .await;
    let mut codes = Vec::new();
    let started = Instant::now();
    for _ in 0..6 {
        codes.push(bus.call("quitter", "go", json!({})).await.unwrap_err().code);
    }
    assert!(
        codes
            .iter()
            .all(|c| *c == ErrorCode::CellFailed || *c == ErrorCode::Unavailable),
        "{codes:?}"
    );
    // The backoff (100 ms, 200 ms, …) keeps it from being restarted in a tight loop.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grandchild_goes_with_its_cell() {
    logs();
    let bus = Bus::start().await;
    let server = bus
        .deploy(&[hostile("parent", "grandchild", json!({}))])
        .await;
    assert_eq!(
        bus.call("parent", "go", json!({})).await.unwrap(),
        json!({"left": "a grandchild"})
    );
    let mark = marker("parent");
    assert!(!processes_marked(&mark).is_empty(), "the grandchild runs");
    server.shutdown().await;
    eventually(10, "the grandchild stopping with its cell", || {
        processes_marked(&mark).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executable_fetched_by_digest_runs_once_verified() {
    logs();
    let bus = Bus::start().await;
    let script = [
        "#!/usr/bin/env python3",
        "import json, sys",
        "for line in sys.stdin:",
        "    request = json.loads(line)",
        "    reply = {'id': request['id'], 'ok': True, 'payload': {'from': 'cbs-modules'}}",
        "    print(json.dumps(reply), flush=True)",
        "",
    ]
    .join("\n");
    let mut fetched = TestCell::new(
        "fetched",
        json!([{"name": "go"}]),
        script.into_bytes(),
        json!({}),
    );
    fetched.runtime = "process";
    let server = bus.deploy(&[fetched]).await;
    assert_eq!(
        bus.call("fetched", "go", json!({})).await.unwrap(),
        json!({"from": "cbs-modules"})
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_written_with_the_python_sdk_answers() {
    logs();
    let bus = Bus::start().await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    // The Cell's own PYTHONPATH comes first; the SDK is found after it.
    let mut cell = TestCell::process(
        "greeter",
        "well-behaved",
        json!([{"name": "hello"}]),
        json!({"env": [{"name": "PYTHONPATH", "value": "/nowhere"}]}),
    );
    cell.spec.module.command = Some(vec![
        "python3".into(),
        format!("{root}/cell-runtime/tests/process_cells/sdk_cell.py"),
    ]);
    let server = bus.deploy(&[cell]).await;
    assert_eq!(
        bus.call("greeter", "hello", json!({"name": "Ada"}))
            .await
            .unwrap(),
        json!({"greeting": "Hello, Ada!", "verb": "hello"})
    );
    let refused = bus.call("greeter", "hello", json!({})).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::BadRequest);
    assert_eq!(refused.details, Some(json!({"field": "name"})));
    server.shutdown().await;
}

/// The runtime killed outright: the sandbox sees its parent die and takes the whole
/// process group with it.
#[test]
fn no_process_of_a_cell_outlives_a_killed_runtime() {
    let mark = format!("cellbus-test-{}-orphan", std::process::id());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/process_cells/cell.py");
    let cells = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        cells.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1733),
    )
    .unwrap();
    // A uid of its own, in the last block, which no runtime claims before 16,383 others.
    use cellbus_runtime::process::{CELL_UIDS, CELL_UID_RANGE};
    let uid = CELL_UID_RANGE.end - CELL_UIDS + std::process::id() % CELL_UIDS;
    // A stand-in for the runtime: a shell that starts the sandbox and is then SIGKILLed.
    let mut runtime = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3<&0; {} sandbox --uid {uid} --cells-dir {} --read {script} -- \
             python3 {script} grandchild {mark} <&3 & wait",
            env!("CARGO_BIN_EXE_cellbus"),
            cells.path().display()
        ))
        .env("CELLBUS_CELL_ENV_PATH", "/usr/bin:/bin")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = runtime.stdin.as_mut().unwrap();
        writeln!(
            stdin,
            r#"{{"id":"2f1d7a4e-9c1b-4a51-8f6e-0d7c3b2a1e90","service":"p","verb":"go","sentAt":"2026-12-01T00:00:00Z","payload":{{}}}}"#
        )
        .unwrap();
    }
    let until = Instant::now() + Duration::from_secs(20);
    // The sandbox, the cell and its grandchild.
    while processes_marked(&mark).len() < 3 {
        assert!(
            Instant::now() < until,
            "the cell and its grandchild did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.kill().unwrap();
    runtime.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !processes_marked(&mark).is_empty() {
        assert!(
            Instant::now() < until,
            "processes outlived the runtime: {:?}",
            processes_marked(&mark)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
