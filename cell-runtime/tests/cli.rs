//! The `cellbus` command line end to end: `up` on the examples (cells in WAT, C and
//! Python, one with its own PostgreSQL schema), `call` against them, `module push`, and
//! `bench` printing both sides.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cellbus_runtime::bench::{self, BenchArgs};
use cellbus_runtime::EngineArgs;
use cellbus_testkit::{NatsServer, PgBouncer, Postgres};
use futures::StreamExt;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn cellbus() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cellbus"));
    command.current_dir(repo()).env_remove("NATS_URL");
    command
}

fn call(url: &str, args: &[&str]) -> Output {
    cellbus()
        .arg("call")
        .args(args)
        .env("NATS_URL", url)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `cellbus up DIR` running, with the lines it printed up to `ready`; its logs go to
/// `logs`.
struct Up {
    child: Child,
    url: String,
    lines: Vec<String>,
    logs: tempfile::NamedTempFile,
}

impl Up {
    fn start(dir: &str, cache: &Path, env: &[(&str, &str)]) -> Self {
        let logs = tempfile::NamedTempFile::new().unwrap();
        let mut child = cellbus()
            .args(["up", dir])
            .env("CELLBUS_CACHE_DIR", cache)
            .env("PATH", path_with_venv())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(logs.reopen().unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        loop {
            let line = receive
                .recv_timeout(Duration::from_secs(300))
                .unwrap_or_else(|_| panic!("`cellbus up {dir}` did not get ready: {lines:?}"));
            let ready = line.starts_with("ready");
            lines.push(line);
            if ready {
                break;
            }
        }
        let url = lines
            .iter()
            .find_map(|l| l.strip_prefix("NATS    "))
            .expect("up prints its NATS URL")
            .to_owned();
        std::thread::spawn(move || while receive.recv().is_ok() {});
        Self {
            child,
            url,
            lines,
            logs,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.logs.path()).unwrap()
    }

    /// Ctrl-C, as a person would stop it.
    fn interrupt(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

/// nats-server comes from the project's virtualenv when it is not on PATH already.
fn path_with_venv() -> String {
    format!(
        "{}:{}",
        repo().join(".venv/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs of 64 hex digits (the length of the passwords `cellbus up` makes) in `text`,
/// other than module digests.
fn secrets_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut run = String::new();
    let mut before = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        // Digests, also as the file names of executables fetched by digest.
        if run.len() >= 64 && !before.ends_with("sha256:") && !before.ends_with("sha256-") {
            found.push(run.clone());
        }
        before.push_str(&run);
        before.push(c);
        if before.len() > 16 {
            before.drain(..before.len() - 16);
        }
        run.clear();
    }
    found
}

#[test]
fn secrets_in_finds_passwords_but_not_digests() {
    let password = "ab".repeat(32);
    assert_eq!(
        secrets_in(&format!(
            "x postgresql://r:{password}@h/db sha256:{password}"
        )),
        vec![password.clone()]
    );
    assert!(secrets_in("sha256:abcd 0123").is_empty());
    assert!(secrets_in(&format!("bin/sha256-{password} started")).is_empty());
}

/// `cellbus up examples/signed` serves the signed module; the same directory with one
/// byte of the module or of the signature changed serves nothing and says why.
#[test]
fn the_signed_example_serves_only_as_signed() {
    let cache = tempfile::tempdir().unwrap();
    let up = Up::start("examples/signed", cache.path(), &[]);
    let reply = call(&up.url, &["signed-echo.say", r#"{"text":"signed"}"#]);
    assert!(reply.status.success(), "{}", text(&reply.stderr));
    up.interrupt();

    let changed_module = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("examples/signed"), changed_module.path());
    let module = changed_module.path().join("echo.wasm");
    let mut bytes = std::fs::read(&module).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&module, bytes).unwrap();
    let up = Up::start(changed_module.path().to_str().unwrap(), cache.path(), &[]);
    assert!(
        !up.lines.iter().any(|l| l.starts_with("serving")),
        "{:?}",
        up.lines
    );
    assert!(
        up.lines
            .iter()
            .any(|l| l.starts_with("note    Cell signed-echo: no file in")
                && l.contains("a module changed after signing never runs")),
        "{:?}",
        up.lines
    );
    up.interrupt();

    let changed_signature = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("examples/signed"), changed_signature.path());
    let cell = changed_signature.path().join("cell.yaml");
    let manifest = std::fs::read_to_string(&cell).unwrap();
    let at = manifest.find("\"signature\": \"").unwrap() + "\"signature\": \"".len();
    let mut manifest = manifest.into_bytes();
    manifest[at] = if manifest[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&cell, manifest).unwrap();
    let output = cellbus()
        .args(["up", changed_signature.path().to_str().unwrap()])
        .env("CELLBUS_CACHE_DIR", cache.path())
        .env("PATH", path_with_venv())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("Cell signed/signed-echo: spec.signature: BadSignature: "),
        "{stderr}"
    );
    assert!(
        !text(&output.stdout).contains("serving"),
        "{}",
        text(&output.stdout)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn up_serves_every_example_and_call_reaches_them() {
    let cache = tempfile::tempdir().unwrap();
    let postgres = Postgres::start();
    // The database client's statements are logged too: where a password would show.
    let up = Up::start(
        "examples",
        cache.path(),
        &[
            ("CELLBUS_DATABASE_URL", postgres.url()),
            ("RUST_LOG", "info,tokio_postgres=debug"),
        ],
    );
    for subject in [
        "cbs.echo.say",
        "cbs.signed-echo.say",
        "cbs.greeter.hello",
        "cbs.caller.relay",
        "cbs.ledger.append",
        "cbs.visits.hit",
        "cbs.wordcount.count",
        "cbs.wordcount-dart.count",
    ] {
        assert!(
            up.lines
                .iter()
                .any(|l| l.starts_with(&format!("serving {subject}"))),
            "{subject} not served: {:?}",
            up.lines
        );
    }

    let echo = call(&up.url, &["echo.say", r#"{"text":"hi"}"#]);
    assert!(echo.status.success(), "{}", text(&echo.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&echo.stdout).unwrap();
    assert_eq!(reply, serde_json::json!({"text": "hi"}));

    let greeter = call(&up.url, &["greeter.hello", r#"{"name":"Ada"}"#]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&greeter.stdout).unwrap(),
        serde_json::json!({"greeting": "Hello, Ada!"}),
        "{}",
        text(&greeter.stderr)
    );

    let relay = call(&up.url, &["caller.relay", r#"{"text":"round trip"}"#]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&relay.stdout).unwrap(),
        serde_json::json!({"echoed": {"text": "round trip"}, "via": "caller"}),
        "{}",
        text(&relay.stderr)
    );

    // A durable verb: `cellbus call` publishes through the stream `cellbus up` made and
    // waits for the reply the pod sends before acknowledging.
    assert!(up
        .lines
        .iter()
        .any(|l| l.starts_with("serving cbs.ledger.append") && l.ends_with("durable)")));
    let ledger = call(
        &up.url,
        &["ledger.append", r#"{"entry":"coffee","cents":250}"#],
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&ledger.stdout).unwrap(),
        serde_json::json!({"entry": "coffee", "cents": 250}),
        "{}",
        text(&ledger.stderr)
    );

    // A Python cell counting in its own table: made on the first visit, then updated.
    assert!(
        up.lines.iter().any(
            |l| l.starts_with("database Cell visits: role cbs_") && l.contains("schema visits")
        ),
        "{:?}",
        up.lines
    );
    for (payload, count) in [(r#"{"page":"/"}"#, 1), (r#"{"page":"/"}"#, 2), ("null", 3)] {
        let visit = call(&up.url, &["visits.hit", payload]);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&visit.stdout).ok(),
            Some(serde_json::json!({ "count": count })),
            "{}",
            text(&visit.stderr)
        );
    }
    let elsewhere = call(&up.url, &["visits.hit", r#"{"page":"/about"}"#]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&elsewhere.stdout).ok(),
        Some(serde_json::json!({ "count": 1 })),
        "{}",
        text(&elsewhere.stderr)
    );

    let refused = call(&up.url, &["echo.say", r#"{"txt":1}"#]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).starts_with("error schema_violation:"));

    // A process cell written with the Python SDK, fetched by digest and run sandboxed.
    let words = call(
        &up.url,
        &["wordcount.count", r#"{"text":"to be or not to be"}"#],
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&words.stdout).ok(),
        Some(serde_json::json!({"words": 6, "distinct": 4, "top": ["be", "to"]})),
        "{}",
        text(&words.stderr)
    );
    // The Dart cell's command is in its pool image only: served, and failing typed here.
    let dart = call(&up.url, &["wordcount-dart.count", r#"{"text":"x"}"#]);
    assert!(
        text(&dart.stderr).starts_with("error cell_failed:"),
        "{}",
        text(&dart.stderr)
    );
    // A Python cell in the CPython embedded in the runtime, in a runtime built with it.
    let hello = call(&up.url, &["hello.greet", r#"{"name":"Ada"}"#]);
    #[cfg(feature = "python")]
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&hello.stdout).ok(),
        Some(serde_json::json!({"greeting": "Hello, Ada!", "letters": 3})),
        "{}",
        text(&hello.stderr)
    );
    #[cfg(not(feature = "python"))]
    {
        assert!(!hello.status.success());
        assert!(
            up.lines
                .iter()
                .any(|l| l.starts_with("failed  Cell hello:") && l.contains("`python` feature")),
            "{:?}",
            up.lines
        );
    }

    let logs = up.logs();
    let printed = up.lines.join("\n");
    let status = up.interrupt();
    assert!(status.success(), "up exits cleanly on Ctrl-C: {status}");
    assert!(
        logs.contains("CREATE ROLE"),
        "the database client's statements were not logged: {logs}"
    );

    for output in [&logs, &printed] {
        assert!(
            !output.contains(postgres.password()),
            "the admin password is in the output"
        );
        assert_eq!(
            secrets_in(output),
            Vec::<String>::new(),
            "a password is in the output"
        );
    }
}

/// The visits example through a transaction-mode pooler, as cells reach Supabase: the
/// admin URL (a CREATEROLE role, not a superuser) only provisions; 300 hits, six at a
/// time, on three server connections, each answered with the next count.
#[test]
fn up_serves_visits_through_a_transaction_mode_pooler() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let postgres = Postgres::start();
    let admin_url = runtime.block_on(postgres.admin_url());
    let pgbouncer = PgBouncer::start(&postgres, 3);
    let port = pgbouncer.port().to_string();
    let up = Up::start(
        "examples/visits",
        cache.path(),
        &[
            ("CELLBUS_DATABASE_URL", &admin_url),
            ("CELLBUS_DATABASE_POOLER_HOST", "127.0.0.1"),
            ("CELLBUS_DATABASE_POOLER_PORT", &port),
        ],
    );
    // Without a project ref the pooler user is the role itself, as PgBouncer wants.
    assert!(
        up.lines.iter().any(|l| {
            let role = l.split_whitespace().nth(4).unwrap_or_default();
            l.starts_with("database Cell visits: role cbs_")
                && l.ends_with(&format!("cells connect through 127.0.0.1:{port} as {role}"))
        }),
        "{:?}",
        up.lines
    );
    const HITS: usize = 300;
    let counts: Vec<Result<u64, String>> = runtime.block_on(async {
        let client = async_nats::connect(&up.url).await.unwrap();
        futures::stream::iter(0..HITS)
            .map(|_| {
                let client = client.clone();
                async move {
                    let request = cellbus_contracts::wire::Request::new(
                        "visits",
                        "hit",
                        serde_json::json!({"page": "/"}),
                    );
                    let reply = client
                        .request(
                            "cbs.visits.hit",
                            serde_json::to_vec(&request).unwrap().into(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    let reply: cellbus_contracts::wire::Reply =
                        serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
                    let payload = reply.into_result().map_err(|e| format!("{e:?}"))?;
                    payload["count"].as_u64().ok_or_else(|| payload.to_string())
                }
            })
            .buffer_unordered(6)
            .collect()
            .await
    });
    let failed: Vec<&String> = counts.iter().filter_map(|c| c.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {HITS} failed: {failed:?}",
        failed.len()
    );
    let mut counts: Vec<u64> = counts.into_iter().map(Result::unwrap).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=HITS as u64).collect::<Vec<_>>());
    assert!(up.interrupt().success());
    drop(pgbouncer);
}

#[test]
fn up_without_a_database_says_what_a_cell_with_one_needs() {
    let cache = tempfile::tempdir().unwrap();
    let up = Up::start("examples/visits", cache.path(), &[]);
    let failed = up
        .lines
        .iter()
        .find(|l| l.starts_with("failed  Cell visits:"))
        .unwrap_or_else(|| panic!("{:?}", up.lines));
    assert!(failed.contains("CELLBUS_DATABASE_URL"), "{failed}");
    let status = up.interrupt();
    assert!(status.success(), "{status}");
}

#[test]
fn call_names_what_is_wrong_with_its_arguments() {
    let unused = "nats://127.0.0.1:1";
    for (args, message) in [
        (vec!["echo", "{}"], "target `echo`: expected SERVICE.VERB"),
        (
            vec!["Echo.say", "{}"],
            "target `Echo.say`: service `Echo` is not a DNS label",
        ),
        (
            vec!["echo.a*", "{}"],
            "target `echo.a*`: verb `a*` cannot be a NATS subject token",
        ),
        (vec!["echo.say", "not json"], "payload: not JSON"),
        (
            vec!["echo.say", "{}", "--timeout", "0s"],
            "the duration must be above zero",
        ),
    ] {
        let output = call(unused, &args);
        assert!(!output.status.success());
        let stderr = text(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let unreachable = call(unused, &["echo.say", "{}"]);
    assert!(text(&unreachable.stderr).contains("connecting to NATS at nats://127.0.0.1:1"));
}

#[test]
fn module_push_prints_the_digest_the_manifest_names() {
    let nats = NatsServer::start();
    let output = cellbus()
        .args([
            "module",
            "push",
            "examples/echo/echo.wasm",
            "--nats-url",
            nats.url(),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let manifest = std::fs::read_to_string(repo().join("examples/echo/cell.yaml")).unwrap();
    let digest = text(&output.stdout).trim().to_owned();
    assert!(manifest.contains(&format!("digest: {digest}")), "{digest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_raw_nats_and_the_runtime_side_by_side() {
    let nats = NatsServer::start();
    let cache = tempfile::tempdir().unwrap();
    for durable in [false, true] {
        let args = BenchArgs {
            concurrency: 4,
            payload: 128,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(100),
            durable,
            cluster: false,
            replicas: None,
            nats_url: Some(nats.url().to_owned()),
            engine: EngineArgs {
                cache_dir: cache.path().to_owned(),
                ..EngineArgs::default()
            },
        };
        let report = bench::run(&args).await.unwrap();
        assert!(report.raw.requests > 0 && report.cellbus.requests > 0);
        assert_eq!(report.cellbus.errors, 0);
        let table = report.table(&args);
        assert!(
            table.contains("raw") && table.contains("cellbus"),
            "{table}"
        );
        assert!(
            table.contains("ratios (cellbus / raw): throughput"),
            "{table}"
        );
        assert_eq!(table.starts_with("durable"), durable, "{table}");
        // CPU is measured on each side; a server the bench did not start is not read.
        assert!(report.raw.cpu > Duration::ZERO && report.cellbus.cpu > Duration::ZERO);
        assert_eq!(
            (report.raw.server_cpu, report.cellbus.server_cpu),
            (None, None)
        );
        assert!(table.contains("the runtime's overhead"), "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_durable_runs_on_a_private_three_node_cluster_with_three_copies() {
    let cache = tempfile::tempdir().unwrap();
    let args = BenchArgs {
        concurrency: 4,
        payload: 128,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(200),
        durable: true,
        cluster: true,
        replicas: None,
        nats_url: None,
        engine: EngineArgs {
            cache_dir: cache.path().to_owned(),
            ..EngineArgs::default()
        },
    };
    let report = bench::run(&args).await.unwrap();
    assert!(report.raw.requests > 0 && report.cellbus.requests > 0);
    assert_eq!((report.raw.errors, report.cellbus.errors), (0, 0));
    // The servers it started are read: three of them work for every durable request.
    assert!(report
        .raw
        .server_cpu
        .is_some_and(|cpu| cpu > Duration::ZERO));
    assert!(report
        .cellbus
        .server_cpu
        .is_some_and(|cpu| cpu > Duration::ZERO));
    let table = report.table(&args);
    assert!(
        table.starts_with("durable (JetStream publish, pull, reply, ack) on a private three-node cluster, 3 copies"),
        "{table}"
    );
    assert!(
        table.contains("ratios (cellbus / raw): throughput"),
        "{table}"
    );
}

#[test]
fn bench_refuses_a_cluster_and_a_given_url_together_and_more_than_five_copies() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cellbus"))
            .arg("bench")
            .args(args)
            .env_remove("NATS_URL")
            .output()
            .unwrap()
    };
    let both = run(&["--cluster", "--nats-url", "nats://127.0.0.1:1"]);
    assert!(!both.status.success());
    assert!(
        text(&both.stderr).contains("--cluster") && text(&both.stderr).contains("--nats-url"),
        "{}",
        text(&both.stderr)
    );
    let many = run(&["--replicas", "7"]);
    assert!(!many.status.success());
    assert!(
        text(&many.stderr).contains("--replicas"),
        "{}",
        text(&many.stderr)
    );
}
