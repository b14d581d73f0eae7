//! The Cell's Ready condition from what its pool's pods say: `$ping` replies (the data
//! path works) and the load states they report in `cbs-status`. Ready means a pod
//! answered through NATS with the digest the Cell names, never merely that a Deployment
//! exists; when it is not ready the message says why, copying the runtime's own error
//! when a pod failed to load the module. And a process pool's SandboxEnforced condition
//! from what its pods' kernels hold process cells to.

use cellbus_contracts::resources::condition;
use cellbus_contracts::status::{LoadState, PingPayload, PodStatus, SandboxReport};

use crate::state::conditions::{reasons, NewCondition, Status};

/// The Ready condition of the Cell `name` serving `service` with module `digest`.
pub fn cell_ready(
    name: &str,
    service: &str,
    digest: Option<&str>,
    pongs: &[PingPayload],
    statuses: &[PodStatus],
) -> NewCondition {
    let ready = |status, reason, message: String| {
        NewCondition::new(condition::READY, status, reason, message)
    };
    let mut serving: Vec<&str> = pongs
        .iter()
        .filter(|pong| pong.service == service && pong.digest.as_deref() == digest)
        .map(|pong| pong.pod.as_str())
        .collect();
    serving.sort_unstable();
    serving.dedup();
    if !serving.is_empty() {
        return ready(
            Status::True,
            reasons::SERVING,
            format!("answered $ping from {}", serving.join(", ")),
        );
    }
    let failure = statuses.iter().find_map(|pod| {
        pod.cells
            .iter()
            .find(|cell| {
                cell.name == name
                    && cell.digest.as_deref() == digest
                    && cell.state == LoadState::Failed
            })
            .map(|cell| {
                (
                    pod.pod.as_str(),
                    cell.reason.as_deref().unwrap_or("no reason given"),
                )
            })
    });
    if let Some((pod, reason)) = failure {
        return ready(
            Status::False,
            reasons::NOT_LOADED,
            format!("pod {pod} could not load the module: {reason}"),
        );
    }
    let mut other: Vec<String> = pongs
        .iter()
        .filter(|pong| pong.service == service)
        .map(|pong| {
            format!(
                "{} runs {}",
                pong.pod,
                pong.digest.as_deref().unwrap_or("no digest")
            )
        })
        .collect();
    other.sort_unstable();
    let message = if other.is_empty() {
        format!("no pod answered $ping for {service} yet")
    } else {
        format!(
            "waiting for {}: {}",
            digest.unwrap_or("the new module"),
            other.join("; ")
        )
    };
    ready(Status::False, reasons::WAITING, message)
}

/// A process pool's SandboxEnforced condition from its pods' reports: False naming the
/// pods whose kernel lacks some of Landlock and what it lacks, never a silently weaker
/// sandbox; Unknown until a pod has reported.
pub fn sandbox_enforced(statuses: &[PodStatus]) -> NewCondition {
    let condition = |status, reason, message: String| {
        NewCondition::new(condition::SANDBOX_ENFORCED, status, reason, message)
    };
    let reported: Vec<(&str, &SandboxReport)> = statuses
        .iter()
        .filter_map(|status| Some((status.pod.as_str(), status.sandbox.as_ref()?)))
        .collect();
    if reported.is_empty() {
        return condition(
            Status::Unknown,
            reasons::WAITING,
            "no runtime pod has reported its kernel yet".into(),
        );
    }
    let mut lacking: Vec<String> = reported
        .iter()
        .filter(|(_, report)| !report.lacking.is_empty())
        .map(|(pod, report)| {
            format!(
                "{pod} (Landlock ABI {}) cannot hold cells to {}",
                report.landlock_abi,
                report.lacking.join(", ")
            )
        })
        .collect();
    lacking.sort();
    if lacking.is_empty() {
        let lowest = reported
            .iter()
            .map(|(_, report)| report.landlock_abi)
            .min()
            .unwrap_or(0);
        return condition(
            Status::True,
            reasons::LANDLOCK,
            format!(
                "process cells run under users of their own, held by Landlock (ABI {lowest} \
                 or newer) to their files, without a network unless granted"
            ),
        );
    }
    condition(
        Status::False,
        reasons::KERNEL_LACKS_LANDLOCK,
        format!(
            "{}; schedule the pool onto nodes with Linux 6.12 or newer",
            lacking.join("; ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellbus_contracts::status::CellLoadState;
    use jiff::Timestamp;

    const NEW: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const OLD: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn pong(pod: &str, digest: &str) -> PingPayload {
        PingPayload {
            pod: pod.into(),
            service: "echo".into(),
            digest: Some(digest.into()),
            loaded_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn report(pod: &str, state: LoadState, reason: Option<&str>) -> PodStatus {
        PodStatus {
            namespace: "default".into(),
            pool: "wasm".into(),
            pod: pod.into(),
            updated_at: Timestamp::UNIX_EPOCH,
            cells: vec![CellLoadState {
                name: "echo".into(),
                service: "echo".into(),
                digest: Some(NEW.into()),
                state,
                loaded_at: None,
                reason: reason.map(Into::into),
            }],
            sandbox: None,
        }
    }

    #[test]
    fn a_pod_answering_with_the_cells_digest_makes_it_ready() {
        let ready = cell_ready(
            "echo",
            "echo",
            Some(NEW),
            &[pong("b", NEW), pong("a", NEW), pong("c", OLD)],
            &[],
        );
        assert_eq!(ready.status, Status::True);
        assert_eq!(ready.reason, reasons::SERVING);
        assert_eq!(ready.message, "answered $ping from a, b");
    }

    #[test]
    fn a_failed_load_is_reported_with_the_runtimes_own_error() {
        let ready = cell_ready(
            "echo",
            "echo",
            Some(NEW),
            &[pong("a", OLD)],
            &[report(
                "a",
                LoadState::Failed,
                Some("module bytes have digest sha256:00, not sha256:11"),
            )],
        );
        assert_eq!(ready.status, Status::False);
        assert_eq!(ready.reason, reasons::NOT_LOADED);
        assert_eq!(
            ready.message,
            "pod a could not load the module: module bytes have digest sha256:00, not sha256:11"
        );
    }

    #[test]
    fn pods_still_on_the_old_module_mean_waiting_and_say_so() {
        let ready = cell_ready(
            "echo",
            "echo",
            Some(NEW),
            &[pong("a", OLD)],
            &[report("a", LoadState::Loaded, None)],
        );
        assert_eq!(ready.status, Status::False);
        assert_eq!(ready.reason, reasons::WAITING);
        assert_eq!(ready.message, format!("waiting for {NEW}: a runs {OLD}"));
    }

    #[test]
    fn silence_means_waiting_for_the_first_answer() {
        let ready = cell_ready("echo", "echo", Some(NEW), &[], &[]);
        assert_eq!(ready.reason, reasons::WAITING);
        assert_eq!(ready.message, "no pod answered $ping for echo yet");
    }

    fn kernel(pod: &str, landlock_abi: u32) -> PodStatus {
        PodStatus {
            sandbox: Some(SandboxReport::of(landlock_abi)),
            ..report(pod, LoadState::Loaded, None)
        }
    }

    #[test]
    fn a_process_pool_says_which_pods_kernels_hold_cells_less_than_they_should() {
        let unknown = sandbox_enforced(&[report("a", LoadState::Loaded, None)]);
        assert_eq!(
            (unknown.status, unknown.reason),
            (Status::Unknown, reasons::WAITING)
        );
        let enforced = sandbox_enforced(&[kernel("a", 7), kernel("b", 6)]);
        assert_eq!(
            (enforced.status, enforced.reason),
            (Status::True, reasons::LANDLOCK)
        );
        assert!(
            enforced.message.contains("ABI 6 or newer"),
            "{}",
            enforced.message
        );
        let lacking = sandbox_enforced(&[kernel("a", 7), kernel("c", 0), kernel("b", 3)]);
        assert_eq!(
            (lacking.status, lacking.reason),
            (Status::False, reasons::KERNEL_LACKS_LANDLOCK)
        );
        assert!(
            lacking
                .message
                .starts_with("b (Landlock ABI 3) cannot hold cells to TCP"),
            "{}",
            lacking.message
        );
        assert!(
            lacking
                .message
                .contains("; c (Landlock ABI 0) cannot hold cells to files"),
            "{}",
            lacking.message
        );
        assert!(
            !lacking.message.contains("a (Landlock"),
            "{}",
            lacking.message
        );
    }
}
