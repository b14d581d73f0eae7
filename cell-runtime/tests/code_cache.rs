//! The compiled-code cache is never trusted by file name: an artifact is loaded only when
//! its header names the module and engine it was compiled for and the hash of its code,
//! from a directory only the runtime's user can write; anything else is compiled again.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cellbus_control::NatsArgs;
use cellbus_runtime::server::{Identity, PoolServer};
use cellbus_runtime::wasm::cache_trust;
use cellbus_runtime::{EngineArgs, Node};
use rstest::rstest;
use serde_json::json;
use support::*;

/// A cell whose verb `which` answers `name`.
fn named(service: &str, name: &str) -> TestCell {
    TestCell::new(
        service,
        json!([{"name": "which"}]),
        constant_cell(&format!("{name:?}"), 0),
        json!({}),
    )
}

fn code_dir(bus: &Bus) -> PathBuf {
    bus.cache.path().join("wasm")
}

/// The compiled artifact of `cell` in the cache.
fn artifact(bus: &Bus, cell: &TestCell) -> PathBuf {
    let hex = cellbus_control::digest_of(&cell.module).replace("sha256:", "");
    std::fs::read_dir(code_dir(bus))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&hex)
        })
        .unwrap_or_else(|| panic!("no artifact of {} in the cache", cell.name))
}

/// Another runtime process on the same cache (the first one's pool stopped), serving the
/// pool as pod `pod` once `services` settled.
/// A bus whose runtime has served cell `alpha` once and stopped, leaving its compiled
/// code in the cache.
async fn alpha_compiled_once() -> (Bus, TestCell) {
    let bus = Bus::start().await;
    let cell = named("alpha", "a");
    bus.deploy(std::slice::from_ref(&cell))
        .await
        .shutdown()
        .await;
    (bus, cell)
}

async fn restart(bus: &Bus, pod: &str, services: &[&str]) -> (Node, PoolServer) {
    let node = Node::start(
        &NatsArgs::url(bus.nats.url()),
        &EngineArgs {
            cache_dir: bus.cache.path().to_owned(),
            max_memory: 64 << 20,
            max_instances: 20,
            max_payload: MAX_PAYLOAD,
        },
        "restarted runtime",
    )
    .await
    .unwrap();
    let server = node.serve_pool(Identity {
        namespace: NAMESPACE.into(),
        pool: POOL.into(),
        pod: pod.into(),
    });
    let states = settle(&server, services).await;
    for service in services {
        assert!(loaded(&states, service), "{service}: {states:?}");
    }
    (node, server)
}

/// (compiles, cache hits) of a node so far.
fn counts(node: &Node) -> (u64, u64) {
    (
        node.shared.executor.compiles(),
        node.shared.executor.cache_hits(),
    )
}

#[tokio::test]
async fn an_artifact_copied_under_another_modules_name_is_compiled_again_not_run() {
    let bus = Bus::start().await;
    let cells = [named("alpha", "a"), named("beta", "b")];
    bus.deploy(&cells).await.shutdown().await;
    std::fs::copy(artifact(&bus, &cells[0]), artifact(&bus, &cells[1])).unwrap();

    let (node, _server) = restart(&bus, "pod-1", &["alpha", "beta"]).await;
    assert_eq!(bus.call("beta", "which", json!(null)).await.unwrap(), "b");
    assert_eq!(bus.call("alpha", "which", json!(null)).await.unwrap(), "a");
    assert_eq!(counts(&node), (1, 1), "beta compiled, alpha from the cache");
}

/// Damages an artifact file in place.
fn damage(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        "truncate" => bytes.truncate(bytes.len() / 2),
        "flip_bit" => {
            let at = bytes.len() - 100;
            bytes[at] ^= 0x10;
        }
        "other_engine" => {
            let header_end = bytes.iter().position(|b| *b == b'\n').unwrap();
            let header = String::from_utf8(bytes[..header_end].to_vec()).unwrap();
            let mut fields: Vec<&str> = header.split(' ').collect();
            fields[2] = "0123456789abcdef";
            bytes.splice(..header_end, fields.join(" ").into_bytes());
        }
        "empty" => bytes.clear(),
        _ => unreachable!(),
    }
    std::fs::write(path, bytes).unwrap();
}

#[rstest]
#[case::truncated("truncate")]
#[case::one_bit_flipped("flip_bit")]
#[case::header_of_another_engine("other_engine")]
#[case::empty("empty")]
#[tokio::test]
async fn a_damaged_artifact_is_compiled_again_and_replaced(#[case] how: &str) {
    let (bus, cell) = alpha_compiled_once().await;
    damage(&artifact(&bus, &cell), how);

    let (node, server) = restart(&bus, "pod-1", &["alpha"]).await;
    assert_eq!(bus.call("alpha", "which", json!(null)).await.unwrap(), "a");
    assert_eq!(counts(&node), (1, 0));
    server.shutdown().await;

    let (node, _server) = restart(&bus, "pod-2", &["alpha"]).await;
    assert_eq!(counts(&node), (0, 1), "the artifact was written again");
}

#[rstest]
#[case::group_writable(0o770)]
#[case::world_writable(0o777)]
#[tokio::test]
async fn a_code_directory_others_can_write_is_refused_with_a_warning_and_cells_still_run(
    #[case] mode: u32,
) {
    let (bus, _) = alpha_compiled_once().await;
    let dir = code_dir(&bus);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();

    let logs = cellbus_testkit::CapturedLogs::default();
    let logging = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(logging);
    let (node, _server) = restart(&bus, "pod-1", &["alpha"]).await;
    drop(guard);

    assert_eq!(bus.call("alpha", "which", json!(null)).await.unwrap(), "a");
    assert_eq!(
        counts(&node),
        (1, 0),
        "the valid artifact there is not used"
    );
    let logs = logs.text();
    let warning = format!(
        "compiled code will not be cached: the code cache cannot be trusted why={}: mode {mode:o} lets others write to it",
        dir.display()
    );
    assert_eq!(logs.matches(&warning).count(), 1, "{logs}");
}

#[tokio::test]
async fn a_cache_volume_anyone_can_write_still_caches_in_its_private_code_directory() {
    let bus = Bus::start().await;
    std::fs::remove_dir_all(code_dir(&bus)).unwrap();
    // A Kubernetes emptyDir is 0777.
    std::fs::set_permissions(bus.cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    bus.assign(&[named("alpha", "a")]).await;
    let (node, server) = restart(&bus, "pod-1", &["alpha"]).await;
    assert_eq!(counts(&node), (1, 0));
    server.shutdown().await;
    let mode = std::fs::metadata(code_dir(&bus))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    let (node, _server) = restart(&bus, "pod-2", &["alpha"]).await;
    assert_eq!(counts(&node), (0, 1), "a normal restart compiles nothing");
}

#[rstest]
#[case::own_and_private(1000, 0o40700, Ok(()))]
#[case::own_and_readable_by_all(1000, 0o40755, Ok(()))]
#[case::group_writable(
    1000,
    0o40770,
    Err("mode 770 lets others write to it (it must be writable by its owner alone)")
)]
#[case::other_writable_sticky(
    1000,
    0o41777,
    Err("mode 1777 lets others write to it (it must be writable by its owner alone)")
)]
#[case::another_users(
    1001,
    0o40700,
    Err("owned by uid 1001, not by this runtime's uid 1000")
)]
#[case::roots(0, 0o40700, Err("owned by uid 0, not by this runtime's uid 1000"))]
fn a_cache_is_trusted_only_when_its_user_alone_can_write_it(
    #[case] owner: u32,
    #[case] mode: u32,
    #[case] expected: Result<(), &str>,
) {
    assert_eq!(
        cache_trust(owner, mode, 1000).map_err(|why| why.to_string()),
        expected.map_err(String::from)
    );
}
