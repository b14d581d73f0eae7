//! Signed modules against every verifier, with keys, certificates and signatures made by
//! `openssl` (an independent producer): the command line (`cellbus module verify`,
//! `cellbus check`) and a real runtime loading its pool's assignment, which is also what
//! `cellbus up` runs. The operator's verification runs the same matrix in
//! operator/tests/signatures.rs.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use cellbus_contracts::status::LoadState;
use cellbus_testkit::pki::{
    self, Case, KeyKind, Role, Signatures, TrustKind, Validity, RELEASE_SIGNER,
};
use serde_json::{json, Value};
use support::{echo_wasm, eventually, logs, Bus, TestCell};

fn cellbus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cellbus"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn cell_of(case: &Case) -> TestCell {
    let mut extra = json!({});
    if let Some(signature) = &case.signature {
        extra["signature"] = signature.clone();
    }
    TestCell::new(
        &case.service,
        json!([{"name": "say"}]),
        case.module.clone(),
        extra,
    )
}

fn pool_name(kind: TrustKind) -> &'static str {
    match kind {
        TrustKind::Keys => "keys",
        TrustKind::Certificates => "certificates",
    }
}

#[test]
fn cellbus_module_verify_decides_each_case() {
    let signatures = Signatures::new(&echo_wasm()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut trust_args: Vec<String> = Vec::new();
    for (_, key) in &signatures.keys {
        trust_args.extend(["--trust".into(), key.public.display().to_string()]);
    }
    let root = signatures.root.pem.display().to_string();
    let certificate_args = vec![
        "--trust".to_owned(),
        root,
        "--signer".into(),
        RELEASE_SIGNER.into(),
    ];
    let mut checked = 0;
    for case in signatures.cases.iter().filter(|c| c.signature.is_some()) {
        let module = dir.path().join(format!("{}.wasm", case.service));
        let sig = dir.path().join(format!("{}.wasm.sig", case.service));
        std::fs::write(&module, &case.module).unwrap();
        std::fs::write(&sig, case.signature.as_ref().unwrap().to_string()).unwrap();
        let mut args = vec![
            "module".to_owned(),
            "verify".into(),
            module.display().to_string(),
            "--sig".into(),
            sig.display().to_string(),
            "--service".into(),
            case.service.clone(),
        ];
        args.extend(match case.trust {
            TrustKind::Keys => trust_args.clone(),
            TrustKind::Certificates => certificate_args.clone(),
        });
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = cellbus(&args);
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        match case.refused {
            None => {
                assert!(output.status.success(), "{}: {stderr}", case.service);
                assert!(stdout.starts_with("ok "), "{}: {stdout}", case.service);
            }
            Some(reason) => {
                assert!(
                    !output.status.success(),
                    "{} verified: {stdout}",
                    case.service
                );
                assert!(
                    stderr.contains(&format!("({reason})")),
                    "{} should be refused with {reason}: {stderr}",
                    case.service
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} cases");
}

#[test]
fn cellbus_check_refuses_each_cell_its_pool_does_not_trust() {
    use base64::Engine as _;
    let signatures = Signatures::new(&echo_wasm()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, document: Value| {
        std::fs::write(dir.path().join(name), document.to_string()).unwrap();
    };
    // The keys from a Secret, the root authority from a ConfigMap, as a cluster keeps
    // them: `cellbus check` reads them from the manifests beside the pools.
    let keys: String = signatures.trust(TrustKind::Keys)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key.as_str().unwrap())
        .collect();
    write(
        "signers.yaml",
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "signers"},
            "data": {"keys.pem": base64::engine::general_purpose::STANDARD.encode(keys)},
        }),
    );
    let mut certificates = signatures.trust(TrustKind::Certificates);
    let root = certificates["certificateAuthorities"][0].clone();
    write(
        "roots.yaml",
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "roots"},
            "data": {"ca.crt": root},
        }),
    );
    certificates["certificateAuthorities"] = json!([]);
    certificates["from"] = json!([{"configMapKeyRef": {"name": "roots", "key": "ca.crt"}}]);
    let trusts = [
        (
            TrustKind::Keys,
            json!({"from": [{"secretKeyRef": {"name": "signers", "key": "keys.pem"}}]}),
        ),
        (TrustKind::Certificates, certificates),
    ];
    for (kind, trust) in trusts {
        write(
            &format!("pool-{}.yaml", pool_name(kind)),
            json!({
                "apiVersion": "cellbus.io/v1alpha1",
                "kind": "CellPool",
                "metadata": {"name": pool_name(kind)},
                "spec": {"runtime": "wasm", "trust": trust},
            }),
        );
    }
    // A pool whose source is missing is refused, naming the source.
    write(
        "pool-lost.yaml",
        json!({
            "apiVersion": "cellbus.io/v1alpha1",
            "kind": "CellPool",
            "metadata": {"name": "lost"},
            "spec": {"runtime": "wasm", "trust": {"from": [{"configMapKeyRef": {"name": "gone", "key": "ca.crt"}}]}},
        }),
    );
    for case in &signatures.cases {
        let mut spec = json!({
            "service": case.service,
            "poolRef": pool_name(case.trust),
            "verbs": [{"name": "say"}],
            "module": {"digest": cellbus_control::digest_of(&case.module)},
        });
        if let Some(signature) = &case.signature {
            spec["signature"] = signature.clone();
        }
        let cell = json!({
            "apiVersion": "cellbus.io/v1alpha1",
            "kind": "Cell",
            "metadata": {"name": case.service},
            "spec": spec,
        });
        std::fs::write(
            dir.path().join(format!("cell-{}.yaml", case.service)),
            cell.to_string(),
        )
        .unwrap();
    }
    let output = cellbus(&["check", &dir.path().display().to_string()]);
    let report = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(!output.status.success(), "{report}");
    assert!(
        report.contains("CellPool default/lost: spec.trust.from[0]: trust source ConfigMap gone key ca.crt: ConfigMap gone does not exist in namespace default"),
        "{report}"
    );
    for case in &signatures.cases {
        let at = format!("Cell default/{}", case.service);
        match case.refused {
            None => assert!(
                report.contains(&format!("ok      {at}\n")),
                "{at}: {report}"
            ),
            Some(reason) => assert!(
                report.contains(&format!("{at}: spec.signature: {reason}: ")),
                "{at} should be refused with {reason}: {report}"
            ),
        }
    }
}

#[test]
fn cellbus_signs_what_openssl_verifies() {
    let pki = pki::Pki::new().unwrap();
    let module = echo_wasm();
    let file = pki.path("echo.wasm");
    std::fs::write(&file, &module).unwrap();
    let digest = pki.digest(&module).unwrap();
    for (kind, algorithm) in [
        (KeyKind::Ed25519, "ed25519"),
        (KeyKind::P256, "ecdsa-p256-sha256"),
        (KeyKind::Rsa(2048), "rsa-pss-sha256"),
        (KeyKind::Rsa(2048), "rsa-pkcs1-sha256"),
    ] {
        let key = pki.key(algorithm, kind).unwrap();
        let sig = pki.path(&format!("{algorithm}.sig"));
        let output = cellbus(&[
            "module",
            "sign",
            &file.display().to_string(),
            "--key",
            &key.private.display().to_string(),
            "--algorithm",
            algorithm,
            "--service",
            "echo",
            "--out",
            &sig.display().to_string(),
        ]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let document: Value = serde_json::from_slice(&std::fs::read(&sig).unwrap()).unwrap();
        assert_eq!(
            document["claims"],
            json!({"digest": digest, "service": "echo"})
        );
        assert_eq!(document["keyId"], json!(pki.key_id(&key).unwrap()));
        let raw = base64_decode(document["signature"].as_str().unwrap());
        assert!(
            openssl_verifies(
                &pki,
                &key,
                algorithm,
                &pki::signed_bytes(&digest, Some("echo")),
                &raw
            ),
            "openssl refuses the {algorithm} signature cellbus made"
        );
    }

    // A certificate signer: `--cert` and `--chain` go into the document, and the chain
    // verifies against the root alone.
    let root = pki.root("root", KeyKind::P256).unwrap();
    let intermediate = pki
        .issue(
            "intermediate",
            KeyKind::P256,
            &root,
            Role::Authority,
            Validity::Current,
        )
        .unwrap();
    let signer = pki
        .issue(
            "release",
            KeyKind::Ed25519,
            &intermediate,
            Role::Signer {
                alt_names: vec![format!("URI:{RELEASE_SIGNER}")],
            },
            Validity::Current,
        )
        .unwrap();
    let sig = pki.path("chained.sig");
    let sign = cellbus(&[
        "module",
        "sign",
        &file.display().to_string(),
        "--key",
        &signer.key.private.display().to_string(),
        "--cert",
        &signer.pem.display().to_string(),
        "--chain",
        &intermediate.pem.display().to_string(),
        "--out",
        &sig.display().to_string(),
    ]);
    assert!(sign.status.success(), "{}", text(&sign.stderr));
    let verify = |signer_name: &str| {
        cellbus(&[
            "module",
            "verify",
            &file.display().to_string(),
            "--sig",
            &sig.display().to_string(),
            "--trust",
            &root.pem.display().to_string(),
            "--signer",
            signer_name,
        ])
    };
    let accepted = verify(RELEASE_SIGNER);
    assert!(accepted.status.success(), "{}", text(&accepted.stderr));
    assert!(
        text(&accepted.stdout).contains("certificate CN=release (ed25519) issued under CN=root"),
        "{}",
        text(&accepted.stdout)
    );
    let refused = verify("spiffe://cellbus.test/someone-else");
    assert!(
        text(&refused.stderr).contains("(SignerNotAllowed)"),
        "{}",
        text(&refused.stderr)
    );

    // A key that does not belong to the certificate is refused before signing.
    let other = pki.key("other", KeyKind::Ed25519).unwrap();
    let mismatch = cellbus(&[
        "module",
        "sign",
        &file.display().to_string(),
        "--key",
        &other.private.display().to_string(),
        "--cert",
        &signer.pem.display().to_string(),
        "--out",
        &pki.path("mismatch.sig").display().to_string(),
    ]);
    assert!(!mismatch.status.success());
    assert!(
        text(&mismatch.stderr).contains("is not for this key"),
        "{}",
        text(&mismatch.stderr)
    );
}

#[test]
fn keygen_refuses_a_weak_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("signer.pem");
    let keygen = |algorithm: &str, bits: &[&str]| {
        let out = out.display().to_string();
        let mut args = vec!["module", "keygen", "--algorithm", algorithm, "--out", &out];
        args.extend_from_slice(bits);
        cellbus(&args)
    };
    let weak = keygen("rsa", &["--bits", "1024"]);
    assert!(!weak.status.success());
    assert!(
        text(&weak.stderr).contains("1024 bits; at least 2048"),
        "{}",
        text(&weak.stderr)
    );
    let made = keygen("p256", &[]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is the owner's alone");
    }
    let again = keygen("p256", &[]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("never overwrites"),
        "{}",
        text(&again.stderr)
    );
    // The key is one openssl reads.
    let check = Command::new("openssl")
        .args(["pkey", "-check", "-noout", "-in"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn openssl_verifies(
    pki: &pki::Pki,
    key: &pki::Key,
    algorithm: &str,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let message_file = pki.path("verify.msg");
    let signature_file = pki.path("verify.sig");
    std::fs::write(&message_file, message).unwrap();
    std::fs::write(&signature_file, signature).unwrap();
    let mut command = Command::new("openssl");
    if algorithm == "ed25519" {
        command
            .args(["pkeyutl", "-verify", "-rawin", "-pubin", "-inkey"])
            .arg(&key.public)
            .arg("-in")
            .arg(&message_file)
            .arg("-sigfile")
            .arg(&signature_file);
    } else {
        command.args(["dgst", "-sha256"]);
        if algorithm == "rsa-pss-sha256" {
            command.args([
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:-2",
            ]);
        }
        command
            .arg("-verify")
            .arg(&key.public)
            .arg("-signature")
            .arg(&signature_file)
            .arg(&message_file);
    }
    command.output().unwrap().status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_loads_only_modules_its_pool_trusts() {
    logs();
    let signatures = Signatures::new(&echo_wasm()).unwrap();
    let bus = Bus::start().await;
    let mut servers = Vec::new();
    for kind in [TrustKind::Keys, TrustKind::Certificates] {
        let cells: Vec<TestCell> = signatures
            .cases
            .iter()
            .filter(|case| case.trust == kind)
            .map(cell_of)
            .collect();
        let spec = json!({"runtime": "wasm", "trust": signatures.trust(kind)});
        bus.assign_in(pool_name(kind), spec, &cells).await;
        let services: Vec<&str> = cells.iter().map(|c| c.spec.service.as_str()).collect();
        servers.push((kind, bus.serve(pool_name(kind), &services).await));
    }
    for case in &signatures.cases {
        let server = &servers
            .iter()
            .find(|(kind, _)| *kind == case.trust)
            .unwrap()
            .1;
        let states = server.states();
        let state = states.iter().find(|s| s.service == case.service).unwrap();
        match case.refused {
            None => {
                assert_eq!(
                    state.state,
                    LoadState::Loaded,
                    "{}: {state:?}",
                    case.service
                );
                assert_eq!(
                    bus.call(&case.service, "say", json!({"text": "signed"}))
                        .await
                        .unwrap(),
                    json!({"text": "signed"})
                );
            }
            Some(reason) => {
                assert_eq!(state.state, LoadState::Failed, "{} loaded", case.service);
                let why = state.reason.as_deref().unwrap_or_default();
                assert!(
                    why.starts_with(&format!("signature refused ({reason})")),
                    "{} should be refused with {reason}: {why}",
                    case.service
                );
                assert_unserved(&bus, &case.service).await;
            }
        }
    }

    // The pool rotates from key A to key B: a module signed by A stops being served at
    // once, by the pods' own check, and B's goes on.
    let cells: Vec<TestCell> = signatures
        .cases
        .iter()
        .filter(|case| case.trust == TrustKind::Keys)
        .map(cell_of)
        .collect();
    let spec = json!({"runtime": "wasm", "trust": signatures.trust_without("rotate-a")});
    bus.assign_in("keys", spec, &cells).await;
    let keys = &servers[0].1;
    eventually(20, "rotate-a dropped", async || {
        keys.states().iter().any(|s| {
            s.service == "rotate-a"
                && s.state == LoadState::Failed
                && s.reason
                    .as_deref()
                    .unwrap_or_default()
                    .contains("(UnknownKey)")
        })
    })
    .await;
    assert_unserved(&bus, "rotate-a").await;
    assert_eq!(
        bus.call("rotate-b", "say", json!({"text": "b"}))
            .await
            .unwrap(),
        json!({"text": "b"})
    );
    for (_, server) in servers {
        server.shutdown().await;
    }
}

/// Nobody answers `service`: the runtime never subscribed, or unsubscribed.
async fn assert_unserved(bus: &Bus, service: &str) {
    let request = cellbus_contracts::wire::Request::new(service, "say", json!({"text": "x"}));
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        bus.client.request(
            format!("cbs.{service}.say"),
            serde_json::to_vec(&request).unwrap().into(),
        ),
    )
    .await
    .expect("a request with no responders fails at once");
    let error = answer.expect_err(&format!("{service} answered"));
    assert_eq!(
        error.kind(),
        async_nats::RequestErrorKind::NoResponders,
        "{service}: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_executable_runs_only_as_signed() {
    logs();
    let pki = pki::Pki::new().unwrap();
    let key = pki.key("executables", KeyKind::P256).unwrap();
    let script = [
        "#!/usr/bin/env python3",
        "import json, sys",
        "for line in sys.stdin:",
        "    request = json.loads(line)",
        "    print(json.dumps({'id': request['id'], 'ok': True, 'payload': {'signed': True}}), flush=True)",
        "",
    ]
    .join("\n")
    .into_bytes();
    let digest = pki.digest(&script).unwrap();
    let signature = |service: &str| {
        use base64::Engine as _;
        let raw = pki
            .sign(
                &key,
                "ecdsa-p256-sha256",
                &pki::signed_bytes(&digest, Some(service)),
            )
            .unwrap();
        json!({
            "version": 1,
            "algorithm": "ecdsa-p256-sha256",
            "claims": {"digest": digest, "service": service},
            "keyId": pki.key_id(&key).unwrap(),
            "signature": base64::engine::general_purpose::STANDARD.encode(raw),
        })
    };
    let mut signed = TestCell::new(
        "signed-exe",
        json!([{"name": "go"}]),
        script.clone(),
        json!({"signature": signature("signed-exe")}),
    );
    signed.runtime = "process";
    // The same executable with a line added, under the original's signature.
    let mut changed_bytes = script.clone();
    changed_bytes.extend_from_slice(b"# changed\n");
    let mut changed = TestCell::new(
        "changed-exe",
        json!([{"name": "go"}]),
        changed_bytes,
        json!({"signature": signature("changed-exe")}),
    );
    changed.runtime = "process";
    let bus = Bus::start().await;
    let trust = json!({"keys": [pki::read(&key.public)]});
    bus.assign_in(
        "exes",
        json!({"runtime": "process", "trust": trust}),
        &[signed, changed],
    )
    .await;
    let server = bus.serve("exes", &["signed-exe", "changed-exe"]).await;
    assert_eq!(
        bus.call("signed-exe", "go", json!({})).await.unwrap(),
        json!({"signed": true})
    );
    let states = server.states();
    let changed = states.iter().find(|s| s.service == "changed-exe").unwrap();
    assert_eq!(changed.state, LoadState::Failed);
    assert!(
        changed
            .reason
            .as_deref()
            .unwrap_or_default()
            .starts_with("signature refused (DigestMismatch)"),
        "{changed:?}"
    );
    assert_unserved(&bus, "changed-exe").await;
    server.shutdown().await;
}

/// Who runs `cellbus up` in [`a_runtime_refuses_a_forged_assignment`].
#[derive(Clone, Copy, Debug)]
enum As {
    Root,
    /// uid 65532 with no capability, as a wasm pool's pod.
    PodUser,
}

/// Defence in depth: someone with write access to the bus (not the operator) rewrites a
/// trusting pool's assignment, pointing the signed Cell at other bytes under its old
/// signature and adding an unsigned cell. A real runtime (`cellbus up examples/signed`,
/// run as root and as the pods' user) refuses both, says why in its report, and serves
/// neither.
async fn a_runtime_refuses_a_forged_assignment(who: As) {
    use std::io::BufRead;
    assert!(
        support::root(),
        "run as root: this test starts the runtime as root and as uid 65532 through setpriv"
    );
    let nats = cellbus_testkit::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/signed");
    for entry in std::fs::read_dir(&example).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let cellbus = std::path::Path::new(env!("CARGO_BIN_EXE_cellbus"));
    let mut command = match who {
        As::Root => Command::new(cellbus),
        As::PodUser => support::as_the_pods_user(
            cellbus,
            &[dir.path(), cache.path()],
            support::Grant::Nothing,
        ),
    };
    let mut up = command
        .arg("up")
        .arg(dir.path())
        .env("NATS_URL", nats.url())
        .env("CELLBUS_CACHE_DIR", cache.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(up.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("ready")) {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{who:?}: cellbus up ended: {seen:?}"))
            .unwrap();
        seen.push(line);
    }
    assert!(
        seen.iter()
            .any(|l| l.starts_with("serving cbs.signed-echo.say")),
        "{who:?}: {seen:?}"
    );

    // The intruder: full access to the bus.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let buckets = cellbus_control::ensure_buckets(&async_nats::jetstream::new(client.clone()))
        .await
        .unwrap();
    let key = cellbus_contracts::assignment::assignment_key("signed", "signed");
    let mut forged = cellbus_control::read_assignment(&buckets.assignments, &key)
        .await
        .unwrap()
        .expect("the assignment cellbus up wrote");
    let other =
        cellbus_control::push_module(&buckets.modules, &support::constant_cell("forged", 0))
            .await
            .unwrap();
    let mut intruder = forged.cells[0].clone();
    intruder.name = "intruder".into();
    intruder.service = "intruder".into();
    intruder.signature = None;
    forged.cells[0].module.digest = Some(other);
    forged.cells.insert(0, intruder);
    cellbus_control::write_assignment(&buckets.assignments, &forged)
        .await
        .unwrap();

    let prefix = cellbus_contracts::status::status_key("signed", "signed", "");
    let refused =
        |states: &[cellbus_contracts::status::CellLoadState], service: &str, reason: &str| {
            states.iter().any(|s| {
                s.service == service
                    && s.state == LoadState::Failed
                    && s.reason
                        .as_deref()
                        .unwrap_or_default()
                        .starts_with(&format!("signature refused ({reason})"))
            })
        };
    eventually(
        20,
        "the forged cells refused in the pod's report",
        async || {
            let Ok(keys) = buckets.status.keys().await else {
                return false;
            };
            let keys: Vec<String> = futures::StreamExt::collect::<Vec<_>>(keys)
                .await
                .into_iter()
                .flatten()
                .filter(|key| key.starts_with(&prefix))
                .collect();
            for key in keys {
                let Ok(Some(value)) = buckets.status.get(&key).await else {
                    continue;
                };
                let report: cellbus_contracts::status::PodStatus =
                    serde_json::from_slice(&value).unwrap();
                if refused(&report.cells, "signed-echo", "DigestMismatch")
                    && refused(&report.cells, "intruder", "Unsigned")
                {
                    return true;
                }
            }
            false
        },
    )
    .await;
    for service in ["signed-echo", "intruder"] {
        let request = cellbus_contracts::wire::Request::new(service, "say", json!({"text": "x"}));
        let answer = client
            .request(
                format!("cbs.{service}.say"),
                serde_json::to_vec(&request).unwrap().into(),
            )
            .await;
        assert!(
            answer.is_err_and(|e| e.kind() == async_nats::RequestErrorKind::NoResponders),
            "{who:?}: {service} is served"
        );
    }
    let _ = up.kill();
    let _ = up.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_as_root_refuses_a_forged_assignment() {
    a_runtime_refuses_a_forged_assignment(As::Root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_as_the_pods_user_refuses_a_forged_assignment() {
    a_runtime_refuses_a_forged_assignment(As::PodUser).await;
}
