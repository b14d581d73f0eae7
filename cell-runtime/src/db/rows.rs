//! A query's rows as the JSON text a cell receives, written one row at a time as they
//! arrive, within a cap on rows and on bytes: host memory for a query stays proportional
//! to what the cell could hold, however many rows the statement would return.

use serde_json::Value;
use tokio_postgres::Row;

use super::values::{self, ValueError};

/// The most rows one query returns to a cell. A cell needs many times their JSON in its
/// own memory to parse them; one that wants more pages through them.
pub const MAX_ROWS: u64 = 100_000;

/// How much one query may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Rows.
    pub rows: u64,
    /// Bytes of JSON text, brackets and commas included.
    pub bytes: usize,
}

impl Caps {
    /// [`MAX_ROWS`] rows and `bytes` bytes.
    pub fn with_bytes(bytes: usize) -> Self {
        Self {
            rows: MAX_ROWS,
            bytes,
        }
    }
}

/// Why the rows of a query cannot be returned.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error(
        "the query returns more than {cap} rows, the most one query returns to a cell \
         (stopped after {rows} rows, {bytes} bytes of JSON); select fewer (WHERE, LIMIT) or \
         page through them"
    )]
    TooManyRows { cap: u64, rows: u64, bytes: usize },
    #[error(
        "the query's rows come to more than {cap} bytes of JSON, the cell's memory \
         (stopped after {rows} rows, {bytes} bytes); select fewer rows or columns, or page \
         through them"
    )]
    TooManyBytes { cap: usize, rows: u64, bytes: usize },
    #[error(transparent)]
    Value(#[from] ValueError),
}

impl RowsError {
    /// What the error envelope's details say: which cap, and how far the query got.
    pub fn details(&self) -> Option<Value> {
        match *self {
            Self::TooManyRows { cap, rows, bytes } => Some(serde_json::json!({
                "cap": "rows", "limit": cap, "rows": rows, "bytes": bytes,
            })),
            Self::TooManyBytes { cap, rows, bytes } => Some(serde_json::json!({
                "cap": "bytes", "limit": cap, "rows": rows, "bytes": bytes,
            })),
            Self::Value(_) => None,
        }
    }
}

/// A JSON array of row objects being written.
pub struct JsonRows {
    text: Vec<u8>,
    rows: u64,
    caps: Caps,
}

impl JsonRows {
    pub fn new(caps: Caps) -> Self {
        Self {
            text: b"[".to_vec(),
            rows: 0,
            caps,
        }
    }

    /// Appends `row`, or says which cap it would pass.
    pub fn push(&mut self, row: &Row) -> Result<(), RowsError> {
        let too_many_bytes = |rows, bytes| RowsError::TooManyBytes {
            cap: self.caps.bytes,
            rows,
            bytes,
        };
        if self.rows >= self.caps.rows {
            return Err(RowsError::TooManyRows {
                cap: self.caps.rows,
                rows: self.rows,
                bytes: self.text.len(),
            });
        }
        // A row larger than the whole cap is refused before it is decoded, which would
        // copy it twice more.
        if values::raw_size(row) > self.caps.bytes {
            return Err(too_many_bytes(self.rows, self.text.len()));
        }
        let before = self.text.len();
        if self.rows > 0 {
            self.text.push(b',');
        }
        let object = values::row_to_json(row)?;
        serde_json::to_writer(&mut self.text, &object).expect("JSON values serialize");
        // One more byte closes the array.
        if self.text.len() + 1 > self.caps.bytes {
            self.text.truncate(before);
            return Err(too_many_bytes(self.rows, before));
        }
        self.rows += 1;
        Ok(())
    }

    /// The array's text.
    pub fn finish(mut self) -> String {
        self.text.push(b']');
        String::from_utf8(self.text).expect("serde_json writes UTF-8")
    }
}
