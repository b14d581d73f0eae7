//! Python cells (pool runtime `python`, cargo feature `python`): CPython embedded with
//! pyo3. A cell is a Python module, stored in `cbs-modules` by digest like a wasm module,
//! that defines `handle(verb, payload)`: `payload` is the request's JSON as Python values,
//! the return value is the reply's payload. `raise cellbus.CellError(code, message,
//! details=None, retryable=None)` answers with that error; any other exception is
//! `cell_failed`, its traceback logged.
//!
//! Concurrency and isolation: one interpreter per runtime process, so Python code of all
//! the pool's cells runs one bytecode at a time under the GIL (I/O and C extensions
//! release it); each request runs on a blocking thread. Cells of a python pool share that
//! interpreter (its `sys.modules`, its memory): a python pool is one trust domain and
//! hosts only python cells; cells that must not see each other go to separate pools. A
//! request past its deadline gets `TimeoutError` raised in its thread at the next
//! bytecode (a call blocked in C, such as `time.sleep`, notices when it returns) and is
//! answered `timeout`.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cellbus_contracts::wire::{ErrorBody, ErrorCode};
use pyo3::prelude::*;
use pyo3::types::PyModule;
use serde_json::Value;
use tracing::warn;

use crate::error::RequestError;

/// Why a Python module cannot be a cell.
#[derive(Debug, thiserror::Error)]
pub enum PythonLoadError {
    #[error("the module is not Python source: it holds a NUL byte")]
    NulByte,
    #[error("running the module")]
    Run(#[source] PyErr),
    #[error("the module defines no `handle(verb, payload)`")]
    NoHandle,
    #[error("`handle` is not a function")]
    HandleNotCallable,
    #[error("preparing the interpreter")]
    Interpreter(#[source] PyErr),
}

/// A loaded Python cell.
pub struct PythonCell {
    service: String,
    handle: Py<PyAny>,
    /// `json.loads`, `json.dumps` and `threading.get_ident`, looked up once rather than
    /// per request.
    loads: Py<PyAny>,
    dumps: Py<PyAny>,
    get_ident: Py<PyAny>,
}

impl PythonCell {
    /// Runs `source` (the module's bytes, already checked against their digest) as the
    /// module of `service` and finds its `handle`.
    pub fn load(service: &str, digest: &str, source: &[u8]) -> Result<Self, PythonLoadError> {
        let code = CString::new(source).map_err(|_| PythonLoadError::NulByte)?;
        let short = digest.trim_start_matches("sha256:");
        let short = &short[..short.len().min(12)];
        let name = format!("cellbus_cell_{}_{short}", service.replace('-', "_"));
        let file = CString::new(format!("<cell {service} {digest}>")).expect("no NUL");
        let module_name = CString::new(name.clone()).expect("no NUL");
        Python::attach(|py| {
            install_cellbus_module(py).map_err(PythonLoadError::Interpreter)?;
            let module = PyModule::from_code(py, &code, &file, &module_name)
                .map_err(PythonLoadError::Run)?;
            // Kept by us, not by sys.modules: a replaced version goes when it is dropped.
            py.import("sys")
                .and_then(|sys| sys.getattr("modules"))
                .and_then(|modules| modules.del_item(&name))
                .map_err(PythonLoadError::Interpreter)?;
            let handle = module
                .getattr("handle")
                .map_err(|_| PythonLoadError::NoHandle)?;
            if !handle.is_callable() {
                return Err(PythonLoadError::HandleNotCallable);
            }
            let function = |module, name| {
                py.import(module)
                    .and_then(|module| module.getattr(name))
                    .map(Bound::unbind)
                    .map_err(PythonLoadError::Interpreter)
            };
            Ok(Self {
                service: service.to_owned(),
                handle: handle.unbind(),
                loads: function("json", "loads")?,
                dumps: function("json", "dumps")?,
                get_ident: function("threading", "get_ident")?,
            })
        })
    }

    /// Runs one request, answering by `deadline`.
    pub async fn invoke(
        self: &Arc<Self>,
        verb: &str,
        payload: &Value,
        deadline: Instant,
    ) -> Result<Value, RequestError> {
        let cell = self.clone();
        let verb = verb.to_owned();
        let payload = payload.to_string();
        let thread = Arc::new(std::sync::Mutex::new(None::<i64>));
        let timed_out = Arc::new(AtomicBool::new(false));
        let running = {
            let thread = thread.clone();
            let timed_out = timed_out.clone();
            tokio::task::spawn_blocking(move || cell.call(&verb, &payload, &thread, &timed_out))
        };
        let watchdog = {
            let thread = thread.clone();
            let timed_out = timed_out.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline.into()).await;
                interrupt(&thread, &timed_out);
            })
        };
        let outcome = running.await;
        watchdog.abort();
        outcome.unwrap_or_else(|error| Err(RequestError::PythonTask(error)))
    }

    fn call(
        &self,
        verb: &str,
        payload: &str,
        thread: &std::sync::Mutex<Option<i64>>,
        timed_out: &AtomicBool,
    ) -> Result<Value, RequestError> {
        Python::attach(|py| {
            let ident = self
                .get_ident
                .bind(py)
                .call0()
                .and_then(|ident| ident.extract::<i64>())
                .map_err(RequestError::PythonInterpreter)?;
            *thread.lock().expect("thread lock") = Some(ident);
            let outcome = self
                .loads
                .bind(py)
                .call1((payload,))
                .and_then(|payload| self.handle.bind(py).call1((verb, payload)))
                .and_then(|result| self.dumps.bind(py).call1((result,)))
                .and_then(|text| text.extract::<String>());
            // No interruption may land after this point.
            *thread.lock().expect("thread lock") = None;
            match outcome {
                Ok(text) => serde_json::from_str(&text).map_err(RequestError::ReplyNotJson),
                Err(error) => Err(self.error_reply(py, &error, timed_out)),
            }
        })
    }

    fn error_reply(&self, py: Python<'_>, error: &PyErr, timed_out: &AtomicBool) -> RequestError {
        if timed_out.load(Ordering::Acquire)
            && error.is_instance_of::<pyo3::exceptions::PyTimeoutError>(py)
        {
            return RequestError::PythonDeadline;
        }
        if let Some(body) = cell_error(py, error, self.dumps.bind(py)) {
            return RequestError::Answered(body);
        }
        warn!(target: "cell", service = %self.service, "{}", crate::celllog::escape(&traceback(py, error)));
        RequestError::Raised(describe(py, error))
    }
}

/// Raises TimeoutError in the thread running the request, if it still runs Python.
fn interrupt(thread: &std::sync::Mutex<Option<i64>>, timed_out: &AtomicBool) {
    Python::attach(|py| {
        let Some(ident) = *thread.lock().expect("thread lock") else {
            return;
        };
        timed_out.store(true, Ordering::Release);
        let exception = py.get_type::<pyo3::exceptions::PyTimeoutError>();
        // SAFETY: called holding the GIL, with a thread id CPython gave us and a borrowed
        // exception type that outlives the call.
        unsafe {
            pyo3::ffi::PyThreadState_SetAsyncExc(ident as _, exception.as_ptr());
        }
    });
}

/// Makes `import cellbus` give cells `CellError`: the Python SDK of process cells, whose
/// `CellError` is the same class with the same codes. Once per process: running the SDK
/// releases the GIL while it imports, and a second cell loading meanwhile must wait for
/// the whole module, not find a half-run one in `sys.modules`.
fn install_cellbus_module(py: Python<'_>) -> PyResult<()> {
    static INSTALLED: pyo3::sync::PyOnceLock<()> = pyo3::sync::PyOnceLock::new();
    INSTALLED
        .get_or_try_init(py, || {
            let modules = py.import("sys")?.getattr("modules")?;
            let code = CString::new(crate::process::PYTHON_SDK).expect("no NUL");
            let module = PyModule::from_code(py, &code, c"<cellbus>", c"cellbus")?;
            modules.set_item("cellbus", module)
        })
        .map(|_| ())
}

/// The error body of a `cellbus.CellError`, if `error` is one; `dumps` is `json.dumps`.
fn cell_error(py: Python<'_>, error: &PyErr, dumps: &Bound<'_, PyAny>) -> Option<ErrorBody> {
    let class = py.import("cellbus").ok()?.getattr("CellError").ok()?;
    let value = error.value(py);
    if !value.is_instance(&class).ok()? {
        return None;
    }
    let code: String = value.getattr("code").ok()?.extract().ok()?;
    let message: String = value.getattr("message").ok()?.str().ok()?.to_string();
    let code: ErrorCode = serde_json::from_value(Value::String(code)).ok()?;
    let mut body = ErrorBody::new(code, message);
    let details = value.getattr("details").ok()?;
    if !details.is_none() {
        let text: String = dumps.call1((details,)).ok()?.extract().ok()?;
        body.details = serde_json::from_str(&text).ok();
    }
    if let Ok(retryable) = value.getattr("retryable").and_then(|r| r.extract::<bool>()) {
        body.retryable = retryable;
    }
    Some(body)
}

fn describe(py: Python<'_>, error: &PyErr) -> String {
    let kind = error
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    format!("{kind}: {}", error.value(py))
}

fn traceback(py: Python<'_>, error: &PyErr) -> String {
    let formatted = py.import("traceback").and_then(|tb| {
        tb.call_method1("format_exception", (error.value(py),))
            .and_then(|lines| lines.extract::<Vec<String>>())
    });
    match formatted {
        Ok(lines) => lines.concat(),
        Err(_) => describe(py, error),
    }
}
