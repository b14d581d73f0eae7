//! Logs captured in memory, for tests that look through what the code under test logged
//! (for passwords, say): give a clone to `tracing_subscriber::fmt().with_writer(move ||
//! logs.clone())`.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Everything written to any clone of it.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs lock")).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
