//! A Kubernetes API server played by the test: the kube client talks to a `tower-test`
//! mock, and the test answers each request after asserting on it, in the style of
//! kube-rs's controller-rs. [`ApiServer::serve_all`] instead answers everything like a
//! forgetful API server would (nothing exists, every write succeeds), for runs that only
//! count requests. Every request must be one the chart's RBAC grants.
//!
//! The controller tests use it through `tests/support`, and the crate's own unit tests
//! (the leader election's) include this file as `crate::mock_api`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

/// One request the client sent.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub body: Value,
}

impl Call {
    /// Whether the request changes something.
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// `fieldManager` of the request.
    pub fn field_manager(&self) -> Option<&str> {
        self.query.get("fieldManager").map(String::as_str)
    }

    /// `METHOD path`, for messages.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

async fn read(request: Request<Body>) -> Call {
    let method = request.method().to_string();
    let uri = request.uri().clone();
    let query = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect();
    // What the chart grants the operator (generated from rbac::RULES) must cover it.
    let access = cellbus_operator::rbac::Access::of_request(
        &method,
        uri.path(),
        uri.query().unwrap_or_default(),
    );
    assert!(
        access
            .as_ref()
            .is_some_and(cellbus_operator::rbac::Access::is_granted),
        "{method} {uri}: {access:?} is not granted by rbac::RULES, from which the Helm \
         chart's RBAC is generated; add it there and run {}",
        cellbus_operator::crdgen::REGENERATE
    );
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Call {
        method,
        path: uri.path().to_owned(),
        query,
        body,
    }
}

fn response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// A `Status` of 404, as the API server answers for a missing object.
pub fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// The API server of one test.
pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
}

/// A request the test has read and not answered yet.
pub struct Pending {
    pub call: Call,
    reply: SendResponse<Response<Body>>,
}

impl std::ops::Deref for Pending {
    type Target = Call;

    fn deref(&self) -> &Call {
        &self.call
    }
}

impl Pending {
    /// Answers with `status` and `body`.
    pub fn answer(self, status: impl Into<u16>, body: &Value) -> Call {
        self.reply.send_response(response(status.into(), body));
        self.call
    }

    /// Accepts a write as the API server would, answering with what was sent.
    pub fn accept(self, status: impl Into<u16>) -> Call {
        let body = self.call.body.clone();
        self.answer(status, &body)
    }
}

/// How long a test waits for a request that should come.
const PATIENCE: Duration = Duration::from_secs(10);

/// A client whose requests go to the returned [`ApiServer`].
pub fn mock_client() -> (kube::Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), ApiServer { handle })
}

impl ApiServer {
    /// The next request, which must come within ten seconds, unanswered.
    pub async fn receive(&mut self) -> Pending {
        let (request, reply) = tokio::time::timeout(PATIENCE, self.handle.next_request())
            .await
            .expect("the controller should have sent another request")
            .expect("the client is gone");
        Pending {
            call: read(request).await,
            reply,
        }
    }

    /// The next request, which must be `method` on `path`, unanswered.
    pub async fn expect(&mut self, method: impl AsRef<str>, path: &str) -> Pending {
        let pending = self.receive().await;
        assert_eq!(
            pending.line(),
            format!("{} {path}", method.as_ref()),
            "unexpected request"
        );
        pending
    }

    /// The next request, which must come within ten seconds, answered as `respond` says.
    pub async fn next(&mut self, respond: impl FnOnce(&Call) -> (u16, Value)) -> Call {
        let pending = self.receive().await;
        let (status, body) = respond(&pending.call);
        pending.answer(status, &body)
    }

    /// Asserts that the client sends nothing more before it is dropped.
    pub async fn expect_no_more_requests(mut self) {
        let next = tokio::time::timeout(PATIENCE, self.handle.next_request())
            .await
            .expect("the client should have been dropped");
        if let Some((request, _)) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }

    /// The next request, answered by [`forgetful`].
    pub async fn next_ok(&mut self) -> Call {
        self.next(forgetful).await
    }

    /// Asserts that no request comes within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some((request, _))) = tokio::time::timeout(wait, self.handle.next_request()).await
        {
            panic!(
                "expected no more requests, got {} {}",
                request.method(),
                request.uri()
            );
        }
    }

    /// Answers every request with [`forgetful`] until the client is dropped, recording
    /// them all.
    pub fn serve_all(self) -> Arc<Mutex<Vec<Call>>> {
        self.serve_with(forgetful)
    }

    /// Answers every request as `respond` says until the client is dropped, recording
    /// them all.
    pub fn serve_with(
        self,
        respond: impl Fn(&Call) -> (u16, Value) + Send + 'static,
    ) -> Arc<Mutex<Vec<Call>>> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        let mut handle = self.handle;
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let call = read(request).await;
                let (status, body) = respond(&call);
                send.send_response(response(status, &body));
                log.lock().unwrap().push(call);
            }
        });
        calls
    }
}

/// How an API server that keeps nothing would answer: reads find nothing, writes succeed
/// and return what was written.
pub fn forgetful(call: &Call) -> (u16, Value) {
    match call.method.as_str() {
        "GET" => not_found(),
        "DELETE" => (
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        _ => (200, object_for(call)),
    }
}

/// An object of the kind the request's path names, with the request's body where it is
/// an object.
pub fn object_for(call: &Call) -> Value {
    let segments: Vec<&str> = call.path.trim_matches('/').split('/').collect();
    let namespace = segments
        .iter()
        .position(|s| *s == "namespaces")
        .and_then(|i| segments.get(i + 1))
        .copied()
        .unwrap_or("default");
    let (resource, name) = match segments.iter().position(|s| *s == "namespaces") {
        Some(i) => (segments.get(i + 2).copied(), segments.get(i + 3).copied()),
        None => (None, None),
    };
    let mut object = match &call.body {
        Value::Object(_) => call.body.clone(),
        _ => json!({}),
    };
    let (api_version, kind) = match resource {
        Some("cells") => ("cellbus.io/v1alpha1", "Cell"),
        Some("cellpools") => ("cellbus.io/v1alpha1", "CellPool"),
        Some("events") => ("events.k8s.io/v1", "Event"),
        Some("deployments") => ("apps/v1", "Deployment"),
        Some("services") => ("v1", "Service"),
        Some("secrets") => ("v1", "Secret"),
        Some("serviceaccounts") => ("v1", "ServiceAccount"),
        Some("poddisruptionbudgets") => ("policy/v1", "PodDisruptionBudget"),
        Some("leases") => ("coordination.k8s.io/v1", "Lease"),
        Some("roles") => ("rbac.authorization.k8s.io/v1", "Role"),
        Some("rolebindings") => ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        _ => ("v1", "Unknown"),
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    let metadata = object
        .as_object_mut()
        .unwrap()
        .entry("metadata")
        .or_insert_with(|| json!({}));
    metadata["namespace"] = json!(namespace);
    if metadata.get("name").is_none() {
        metadata["name"] = json!(name.unwrap_or("generated"));
    }
    object
}
