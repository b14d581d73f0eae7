//! What a cell's output costs the host. A cell with a 64 MiB memory limit writes 16 MiB
//! of `[0,0,…]` (a value built from it would take 16 times that); the runtime's peak
//! resident memory may grow by a small multiple of the cell's limit, never by the size of
//! a tree built from its output. Alone in its binary, so no other test moves the peak.

mod support;

use cellbus_contracts::wire::ErrorCode;
use serde_json::json;
use support::*;

/// The process's peak resident set, in bytes (`VmHWM` of /proc/self/status).
fn peak_resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib << 10
}

/// `handle` replying `[0,0,…,0]` of `len` bytes (`len` odd), written in fresh pages.
fn zeros_cell(len: u32) -> Vec<u8> {
    let pages = len / 65536 + 1;
    let pairs = (len - 3) / 2;
    let body = format!(
        r#"(local $at i32) (local $i i32)
    (local.set $at (i32.mul (memory.grow (i32.const {pages})) (i32.const 65536)))
    (i32.store8 (local.get $at) (i32.const 0x5b))
    (block $done
      (loop $fill
        (br_if $done (i32.ge_u (local.get $i) (i32.const {pairs})))
        (i32.store16
          (i32.add (i32.add (local.get $at) (i32.const 1)) (i32.shl (local.get $i) (i32.const 1)))
          (i32.const 0x2c30))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $fill)))
    (i32.store16 (i32.add (local.get $at) (i32.const {tail})) (i32.const 0x5d30))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (local.get $at))
    (i32.store (i32.const 24) (i32.const {len}))
    (i32.const 16)"#,
        tail = 1 + 2 * pairs
    );
    component(&cell_wat("", "", &body, ""))
}

#[tokio::test]
async fn sixteen_mib_of_output_from_a_64_mib_cell_grows_the_runtime_by_less_than_twice_its_limit() {
    const LIMIT: u64 = 64 << 20;
    let bus = Bus::start().await;
    bus.deploy(&[
        TestCell::new(
            "zeros",
            json!([{"name": "get"}]),
            zeros_cell((16 << 20) + 1),
            json!({"limits": {"memory": "64Mi"}}),
        ),
        TestCell::new(
            "small",
            json!([{"name": "get"}]),
            zeros_cell(7),
            json!({"limits": {"memory": "64Mi"}}),
        ),
    ])
    .await;
    // Everything a request needs besides the output itself (code, instance slots,
    // connections) is in place before the peak is read.
    assert_eq!(
        bus.call("small", "get", json!(null)).await,
        Ok(json!([0, 0, 0]))
    );
    let before = peak_resident();

    let error = bus.call("zeros", "get", json!(null)).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::ResourceExhausted, "{error:?}");
    assert!(
        error.message.contains("16777217 bytes"),
        "{}",
        error.message
    );

    let grown = peak_resident().saturating_sub(before);
    println!(
        "peak resident memory grew by {} MiB for 16 MiB of output (cell limit 64 MiB)",
        grown >> 20
    );
    assert!(
        grown < 2 * LIMIT,
        "the runtime grew by {} MiB, over twice the cell's 64 MiB limit",
        grown >> 20
    );
}
