//! JSON values in and out of PostgreSQL for the `db` capability: a cell's JSON parameters
//! are bound in the binary format of the type the server inferred for each `$n`, and
//! result rows come back as JSON objects. What cannot be converted exactly is an error
//! that names the parameter or column and the cast that would make it work.
//!
//! Parameters: JSON `null` is SQL NULL for every type. Otherwise `bool` takes a JSON
//! boolean; `int2`/`int4`/`int8`/`oid` a whole number in range; `float4`/`float8` a
//! number or "NaN", "Infinity", "-Infinity"; `numeric` a number or a numeric string,
//! kept exactly as written; text types (`text`, `varchar`, `bpchar`, `name`, `citext`,
//! enums) a string only; `json`/`jsonb` any value; `uuid` a UUID string; `timestamptz`
//! an RFC 3339 string with an offset; `timestamp`, `date` and `time` ISO 8601 civil
//! strings; `bytea` the `\x`-hex text PostgreSQL prints; arrays of these a JSON array.
//! A `void` column (`SELECT pg_sleep(1)`) comes back as `null`.
//! Each side reads what the other writes, so a row's values can be bound again as they
//! are.

use std::collections::BTreeSet;
use std::fmt;

use bytes::{BufMut, BytesMut};
use jiff::civil;
use jiff::Timestamp;
use postgres_protocol::types::{self as wire, ArrayDimension};
use serde_json::{Map, Number, Value};
use tokio_postgres::fallible_iterator::FallibleIterator;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, Kind, ToSql, Type};
use tokio_postgres::{Column, Row};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// Where a parameter value sits: `$number`, or one element of an array parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The parameter's number, from 1 as in `$1`.
    pub number: usize,
    /// The element's position in an array parameter, from 1 as PostgreSQL counts.
    pub element: Option<usize>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parameter ${}", self.number)?;
        if let Some(element) = self.element {
            write!(f, " element {element}")?;
        }
        Ok(())
    }
}

/// A value that cannot cross between the cell's JSON and PostgreSQL. The messages are
/// for the cell's author: they become the message of a `bad-request` error.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("params must be a JSON array")]
    ParamsNotArray,
    #[error("params must be a JSON array: {cause}")]
    ParamsNotJson { cause: serde_json::Error },
    #[error("the statement takes {expected} parameters, {given} given")]
    ParamCount { expected: usize, given: usize },
    #[error(
        "parameter ${number} has type {ty}, which the db capability cannot bind; \
         cast it in SQL, e.g. ${number}::text"
    )]
    ParamTypeUnsupported { number: usize, ty: String },
    #[error("{place} has type {ty} and needs {expected}, but {given} was given")]
    ParamMismatch {
        place: Place,
        ty: String,
        expected: &'static str,
        given: String,
    },
    #[error("{place} has type {ty}, and {value} is out of range for it")]
    ParamOutOfRange {
        place: Place,
        ty: String,
        value: String,
    },
    #[error("{place} has type {ty} and needs {expected}; {given} is not one: {reason}")]
    ParamInvalid {
        place: Place,
        ty: String,
        expected: &'static str,
        given: String,
        reason: String,
    },
    #[error(
        "column `{column}` has type {ty}, which the db capability cannot return; \
         cast it in SQL, e.g. {column}::text"
    )]
    ColumnTypeUnsupported { column: String, ty: String },
    #[error("two columns are named `{column}`; give them different names with AS")]
    DuplicateColumn { column: String },
    #[error("column `{column}` has type {ty}, and {reason}")]
    ColumnValue {
        column: String,
        ty: String,
        reason: String,
    },
    #[error("reading column `{column}`")]
    ReadColumn {
        column: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Reads the `params` argument of `query` and `execute`. An empty string is no
/// parameters, so cells without any need not write `[]`.
pub fn parse_params(text: &str) -> Result<Vec<Value>, ValueError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str(text) {
        Ok(Value::Array(values)) => Ok(values),
        Ok(_) => Err(ValueError::ParamsNotArray),
        Err(cause) => Err(ValueError::ParamsNotJson { cause }),
    }
}

/// Checks `values` against the parameter types of a prepared statement, so that a bad
/// value is a typed error before anything is sent rather than a failed bind.
pub fn check_params(types: &[Type], values: &[Value]) -> Result<(), ValueError> {
    if types.len() != values.len() {
        return Err(ValueError::ParamCount {
            expected: types.len(),
            given: values.len(),
        });
    }
    let mut scratch = BytesMut::new();
    for (param, ty) in Param::list(values).iter().zip(types) {
        scratch.clear();
        param.encode(ty, &mut scratch)?;
    }
    Ok(())
}

/// One JSON parameter, bound in the binary format of the type the server inferred for
/// it. Pass a [`Param::list`] to `query_raw` or `execute_raw`.
#[derive(Debug)]
pub struct Param<'a> {
    number: usize,
    value: &'a Value,
}

impl<'a> Param<'a> {
    /// The parameters `$1`, `$2`, … holding `values` in order.
    pub fn list(values: &'a [Value]) -> Vec<Param<'a>> {
        values
            .iter()
            .enumerate()
            .map(|(index, value)| Param {
                number: index + 1,
                value,
            })
            .collect()
    }

    fn encode(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, ValueError> {
        if self.value.is_null() {
            return Ok(IsNull::Yes);
        }
        if !supported(ty) {
            return Err(ValueError::ParamTypeUnsupported {
                number: self.number,
                ty: type_name(ty),
            });
        }
        let place = Place {
            number: self.number,
            element: None,
        };
        encode(place, ty, self.value, out)?;
        Ok(IsNull::No)
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        Ok(self.encode(ty, out)?)
    }

    // Every type is accepted here so that `to_sql` can say what went wrong with the
    // value; the driver's own mismatch error names only Rust types.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Checks that a statement's result columns can all be returned, before it runs: an
/// `UPDATE … RETURNING` must not change rows and then fail on its answer.
pub fn check_columns(columns: &[Column]) -> Result<(), ValueError> {
    let mut names = BTreeSet::new();
    for column in columns {
        if !supported(column.type_()) {
            return Err(ValueError::ColumnTypeUnsupported {
                column: column.name().to_owned(),
                ty: type_name(column.type_()),
            });
        }
        // Rows are JSON objects, so a second column of the same name would silently
        // replace the first.
        if !names.insert(column.name()) {
            return Err(ValueError::DuplicateColumn {
                column: column.name().to_owned(),
            });
        }
    }
    Ok(())
}

/// The rows as a JSON array of objects keyed by column name.
pub fn rows_to_json(rows: &[Row]) -> Result<Value, ValueError> {
    let Some(first) = rows.first() else {
        return Ok(Value::Array(Vec::new()));
    };
    check_columns(first.columns())?;
    rows.iter()
        .map(row_to_json)
        .collect::<Result<_, _>>()
        .map(Value::Array)
}

/// One row as a JSON object keyed by column name.
pub(crate) fn row_to_json(row: &Row) -> Result<Value, ValueError> {
    let mut object = Map::new();
    for (index, column) in row.columns().iter().enumerate() {
        let RawColumn(raw) = row
            .try_get(index)
            .map_err(|source| ValueError::ReadColumn {
                column: column.name().to_owned(),
                source,
            })?;
        let value = match raw {
            None => Value::Null,
            Some(raw) => decode(column.type_(), raw).map_err(|problem| problem.at(column))?,
        };
        object.insert(column.name().to_owned(), value);
    }
    Ok(Value::Object(object))
}

/// The bytes of a row's values as the server sent them.
pub(crate) fn raw_size(row: &Row) -> usize {
    (0..row.len())
        .filter_map(|index| row.try_get::<_, RawColumn>(index).ok())
        .map(|RawColumn(raw)| raw.map_or(0, <[u8]>::len))
        .sum()
}

/// A column's bytes as the server sent them, decoded by [`decode`] where the column's
/// name is at hand for errors.
struct RawColumn<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for RawColumn<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Self(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Self(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The types both directions handle; what a type means for JSON is in the module
/// comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scalar {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    Json,
    Jsonb,
    Uuid,
    Timestamptz,
    Timestamp,
    Date,
    Time,
    Bytea,
    /// What functions such as `pg_sleep` and `pg_advisory_lock` return: JSON `null`.
    Void,
}

fn scalar(ty: &Type) -> Option<Scalar> {
    match ty.kind() {
        // A domain is sent and received as its base type.
        Kind::Domain(base) => return scalar(base),
        // Enum labels travel as text.
        Kind::Enum(_) => return Some(Scalar::Text),
        // citext is an extension type whose binary form is text's.
        Kind::Simple if ty.name() == "citext" => return Some(Scalar::Text),
        _ => {}
    }
    Some(match *ty {
        Type::BOOL => Scalar::Bool,
        Type::INT2 => Scalar::Int2,
        Type::INT4 => Scalar::Int4,
        Type::INT8 => Scalar::Int8,
        Type::OID => Scalar::Oid,
        Type::FLOAT4 => Scalar::Float4,
        Type::FLOAT8 => Scalar::Float8,
        Type::NUMERIC => Scalar::Numeric,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Scalar::Text,
        Type::JSON => Scalar::Json,
        Type::JSONB => Scalar::Jsonb,
        Type::UUID => Scalar::Uuid,
        Type::TIMESTAMPTZ => Scalar::Timestamptz,
        Type::TIMESTAMP => Scalar::Timestamp,
        Type::DATE => Scalar::Date,
        Type::TIME => Scalar::Time,
        Type::BYTEA => Scalar::Bytea,
        Type::VOID => Scalar::Void,
        _ => return None,
    })
}

/// Arrays of supported types, of any number of dimensions, are supported too.
fn array_element(ty: &Type) -> Option<&Type> {
    match ty.kind() {
        Kind::Array(element) => Some(element),
        Kind::Domain(base) => array_element(base),
        _ => None,
    }
}

fn supported(ty: &Type) -> bool {
    match array_element(ty) {
        Some(element) => scalar(element).is_some(),
        None => scalar(ty).is_some(),
    }
}

/// The name a cell author would write in SQL: `int4[]` rather than `_int4`.
fn type_name(ty: &Type) -> String {
    match ty.kind() {
        Kind::Array(element) => format!("{}[]", type_name(element)),
        _ => ty.name().to_owned(),
    }
}

/// How a value appears in an error: enough to find it, never the whole of a long one.
fn describe(value: &Value) -> String {
    const LONGEST: usize = 40;
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > LONGEST => {
            let start: String = s.chars().take(LONGEST).collect();
            format!("the string {:?}", start + "…")
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

const PG_EPOCH_DATETIME: civil::DateTime = civil::DateTime::constant(2000, 1, 1, 0, 0, 0, 0);
const MICROS_PER_DAY: i64 = 86_400_000_000;

const EXPECT_INTEGER: &str = "an integer";
const EXPECT_FLOAT: &str = "a number";
const EXPECT_NUMERIC: &str = "a number or a numeric string";
const EXPECT_TIMESTAMPTZ: &str =
    "an RFC 3339 timestamp string with an offset, like \"2026-11-22T07:37:16Z\"";
const EXPECT_TIMESTAMP: &str = "a date and time string, like \"2026-11-22T07:37:16\"";
const EXPECT_DATE: &str = "a date string, like \"2026-11-22\"";
const EXPECT_TIME: &str = "a time string, like \"07:37:16\"";
const EXPECT_BYTEA: &str = "a string of hex digits after \\x, like \"\\x01ff\"";
const EXPECT_UUID: &str = "a UUID string";

/// Writes the binary form of a non-null `value` for `ty`, which [`supported`] accepts.
fn encode(place: Place, ty: &Type, value: &Value, out: &mut BytesMut) -> Result<(), ValueError> {
    if let Some(element) = array_element(ty) {
        return encode_array(place, element, value, out);
    }
    let Some(scalar) = scalar(ty) else {
        return Err(ValueError::ParamTypeUnsupported {
            number: place.number,
            ty: type_name(ty),
        });
    };
    let mismatch = |expected| ValueError::ParamMismatch {
        place,
        ty: type_name(ty),
        expected,
        given: describe(value),
    };
    let out_of_range = || ValueError::ParamOutOfRange {
        place,
        ty: type_name(ty),
        value: match value {
            Value::Number(n) => n.to_string(),
            other => describe(other),
        },
    };
    let invalid = |expected, reason: String| ValueError::ParamInvalid {
        place,
        ty: type_name(ty),
        expected,
        given: describe(value),
        reason,
    };
    match scalar {
        Scalar::Bool => {
            let Value::Bool(b) = value else {
                return Err(mismatch("true or false"));
            };
            wire::bool_to_sql(*b, out);
        }
        Scalar::Int2 => {
            let n = integer(value, i16::MIN.into(), i16::MAX.into())
                .map_err(|e| e.into_error(mismatch, out_of_range))?;
            wire::int2_to_sql(n as i16, out);
        }
        Scalar::Int4 => {
            let n = integer(value, i32::MIN.into(), i32::MAX.into())
                .map_err(|e| e.into_error(mismatch, out_of_range))?;
            wire::int4_to_sql(n as i32, out);
        }
        Scalar::Int8 => {
            let n = integer(value, i64::MIN, i64::MAX)
                .map_err(|e| e.into_error(mismatch, out_of_range))?;
            wire::int8_to_sql(n, out);
        }
        Scalar::Oid => {
            let n = integer(value, 0, u32::MAX.into())
                .map_err(|e| e.into_error(mismatch, out_of_range))?;
            wire::oid_to_sql(n as u32, out);
        }
        Scalar::Float4 => {
            let x = float(value).ok_or_else(|| mismatch(EXPECT_FLOAT))?;
            let narrowed = x as f32;
            if x.is_finite() && !narrowed.is_finite() {
                return Err(out_of_range());
            }
            wire::float4_to_sql(narrowed, out);
        }
        Scalar::Float8 => {
            let x = float(value).ok_or_else(|| mismatch(EXPECT_FLOAT))?;
            wire::float8_to_sql(x, out);
        }
        Scalar::Numeric => {
            let text = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => return Err(mismatch(EXPECT_NUMERIC)),
            };
            let numeric =
                parse_numeric(&text).map_err(|reason| invalid(EXPECT_NUMERIC, reason.into()))?;
            write_numeric(&numeric, out).map_err(|_| out_of_range())?;
        }
        Scalar::Text => {
            let Value::String(s) = value else {
                return Err(mismatch("a string"));
            };
            if s.contains('\0') {
                return Err(invalid(
                    "a string",
                    "PostgreSQL text cannot hold the NUL character".into(),
                ));
            }
            wire::text_to_sql(s, out);
        }
        Scalar::Json | Scalar::Jsonb => {
            value
                .to_sql(&json_type(scalar), out)
                .map_err(|error| invalid("a JSON value", error.to_string()))?;
        }
        Scalar::Uuid => {
            let Value::String(s) = value else {
                return Err(mismatch(EXPECT_UUID));
            };
            let uuid = uuid::Uuid::parse_str(s)
                .map_err(|error| invalid(EXPECT_UUID, error.to_string()))?;
            wire::uuid_to_sql(uuid.into_bytes(), out);
        }
        Scalar::Timestamptz => {
            let Value::String(s) = value else {
                return Err(mismatch(EXPECT_TIMESTAMPTZ));
            };
            match infinity(s) {
                Some(true) => wire::timestamp_to_sql(i64::MAX, out),
                Some(false) => wire::timestamp_to_sql(i64::MIN, out),
                None => {
                    let timestamp: Timestamp = s.parse().map_err(|error: jiff::Error| {
                        invalid(EXPECT_TIMESTAMPTZ, error.to_string())
                    })?;
                    whole_micros(timestamp.subsec_nanosecond())
                        .map_err(|error| invalid(EXPECT_TIMESTAMPTZ, error.to_string()))?;
                    timestamp
                        .to_sql(&Type::TIMESTAMPTZ, out)
                        .map_err(|_| out_of_range())?;
                }
            }
        }
        Scalar::Timestamp => {
            let Value::String(s) = value else {
                return Err(mismatch(EXPECT_TIMESTAMP));
            };
            match infinity(s) {
                Some(true) => wire::timestamp_to_sql(i64::MAX, out),
                Some(false) => wire::timestamp_to_sql(i64::MIN, out),
                None => {
                    let datetime: civil::DateTime = s.parse().map_err(|error: jiff::Error| {
                        invalid(EXPECT_TIMESTAMP, error.to_string())
                    })?;
                    whole_micros(datetime.subsec_nanosecond())
                        .map_err(|error| invalid(EXPECT_TIMESTAMP, error.to_string()))?;
                    // Not the driver's impl: it refuses the last day of year 9999, which
                    // PostgreSQL holds. Civil datetimes span ±9999 years, well inside i64
                    // microseconds.
                    let micros = datetime.duration_since(PG_EPOCH_DATETIME).as_micros() as i64;
                    wire::timestamp_to_sql(micros, out);
                }
            }
        }
        Scalar::Date => {
            let Value::String(s) = value else {
                return Err(mismatch(EXPECT_DATE));
            };
            match infinity(s) {
                Some(true) => wire::date_to_sql(i32::MAX, out),
                Some(false) => wire::date_to_sql(i32::MIN, out),
                None => {
                    let date: civil::Date = s
                        .parse()
                        .map_err(|error: jiff::Error| invalid(EXPECT_DATE, error.to_string()))?;
                    date.to_sql(&Type::DATE, out).map_err(|_| out_of_range())?;
                }
            }
        }
        Scalar::Time => {
            let Value::String(s) = value else {
                return Err(mismatch(EXPECT_TIME));
            };
            if s == "24:00:00" {
                wire::time_to_sql(MICROS_PER_DAY, out);
            } else {
                let time: civil::Time = s
                    .parse()
                    .map_err(|error: jiff::Error| invalid(EXPECT_TIME, error.to_string()))?;
                whole_micros(time.subsec_nanosecond())
                    .map_err(|error| invalid(EXPECT_TIME, error.to_string()))?;
                time.to_sql(&Type::TIME, out).map_err(|_| out_of_range())?;
            }
        }
        Scalar::Bytea => {
            let Value::String(s) = value else {
                return Err(mismatch(EXPECT_BYTEA));
            };
            let bytes = parse_hex(s).map_err(|reason| invalid(EXPECT_BYTEA, reason.into()))?;
            wire::bytea_to_sql(&bytes, out);
        }
        Scalar::Void => return Err(mismatch("null")),
    }
    Ok(())
}

/// A one-dimensional array; its elements go through [`encode`] with their own place.
fn encode_array(
    place: Place,
    element: &Type,
    value: &Value,
    out: &mut BytesMut,
) -> Result<(), ValueError> {
    let Value::Array(items) = value else {
        return Err(ValueError::ParamMismatch {
            place,
            ty: format!("{}[]", type_name(element)),
            expected: "a JSON array",
            given: describe(value),
        });
    };
    let out_of_range = || ValueError::ParamOutOfRange {
        place,
        ty: format!("{}[]", type_name(element)),
        value: format!("an array of {} elements", items.len()),
    };
    let len = i32::try_from(items.len()).map_err(|_| out_of_range())?;
    // PostgreSQL's own empty array has no dimensions at all.
    let dimension = (!items.is_empty()).then_some(ArrayDimension {
        len,
        lower_bound: 1,
    });
    let encode_item = |(index, item): (usize, &Value), out: &mut BytesMut| {
        if item.is_null() {
            return Ok(postgres_protocol::IsNull::Yes);
        }
        let element_place = Place {
            number: place.number,
            element: Some(index + 1),
        };
        encode(element_place, element, item, out)?;
        Ok(postgres_protocol::IsNull::No)
    };
    let items = items.iter().enumerate();
    wire::array_to_sql(dimension, element.oid(), items, encode_item, out).map_err(|error| {
        // An element's own error comes back boxed, and names the element.
        match error.downcast::<ValueError>() {
            Ok(error) => *error,
            // array_to_sql's own: an element longer than an i32 length can say.
            Err(_) => out_of_range(),
        }
    })
}

/// Why a JSON value is not an integer for a column of the given range.
enum IntegerProblem {
    NotInteger,
    OutOfRange,
}

impl IntegerProblem {
    fn into_error(
        self,
        mismatch: impl FnOnce(&'static str) -> ValueError,
        out_of_range: impl FnOnce() -> ValueError,
    ) -> ValueError {
        match self {
            Self::NotInteger => mismatch(EXPECT_INTEGER),
            Self::OutOfRange => out_of_range(),
        }
    }
}

/// A whole number within `min..=max`. Whole floats such as `1e3` count: they are exact,
/// and some JSON writers print large integers that way.
fn integer(value: &Value, min: i64, max: i64) -> Result<i64, IntegerProblem> {
    let Value::Number(n) = value else {
        return Err(IntegerProblem::NotInteger);
    };
    let whole = if let Some(i) = n.as_i64() {
        i
    } else if n.is_u64() {
        return Err(IntegerProblem::OutOfRange);
    } else {
        let x = n.as_f64().ok_or(IntegerProblem::NotInteger)?;
        if x.fract() != 0.0 {
            return Err(IntegerProblem::NotInteger);
        }
        // 2^63 is exact as an f64; the i64 range is [-2^63, 2^63).
        if !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&x) {
            return Err(IntegerProblem::OutOfRange);
        }
        x as i64
    };
    if (min..=max).contains(&whole) {
        Ok(whole)
    } else {
        Err(IntegerProblem::OutOfRange)
    }
}

/// A JSON number, or one of the strings results use for values JSON has no number for.
fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// `Some(true)` for "infinity", `Some(false)` for "-infinity": PostgreSQL's dates and
/// timestamps have both.
fn infinity(s: &str) -> Option<bool> {
    match s {
        "infinity" | "+infinity" => Some(true),
        "-infinity" => Some(false),
        _ => None,
    }
}

/// PostgreSQL keeps microseconds; dropping finer digits would change the value.
fn whole_micros(subsec_nanosecond: i32) -> Result<(), TooPrecise> {
    if subsec_nanosecond % 1000 == 0 {
        Ok(())
    } else {
        Err(TooPrecise)
    }
}

/// A time with digits finer than a microsecond.
#[derive(Debug, thiserror::Error)]
#[error("PostgreSQL keeps at most 6 fractional digits of a second")]
struct TooPrecise;

fn parse_hex(s: &str) -> Result<Vec<u8>, &'static str> {
    let digits = s.strip_prefix("\\x").ok_or("it does not start with \\x")?;
    hex::decode(digits).map_err(|error| match error {
        hex::FromHexError::OddLength => "it has an odd number of hex digits",
        _ => "it has a character that is not a hex digit",
    })
}

/// json and jsonb differ on the wire by jsonb's version byte, which the driver writes
/// and checks by type; a domain's own type would get neither.
fn json_type(scalar: Scalar) -> Type {
    if scalar == Scalar::Jsonb {
        Type::JSONB
    } else {
        Type::JSON
    }
}

/// A decimal as PostgreSQL's numeric holds it.
#[derive(Debug, PartialEq, Eq)]
enum Numeric {
    NaN,
    Infinity,
    NegativeInfinity,
    Finite {
        negative: bool,
        /// Significant decimal digits, without leading or trailing zeros; empty for 0.
        digits: Vec<u8>,
        /// The value is `0.digits × 10^point`.
        point: i64,
        /// Digits shown after the decimal point, trailing zeros included.
        dscale: i64,
    },
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
const NUMERIC_DSCALE_MAX: i64 = 0x3FFF;
/// The most base-10000 digits the server's `numeric_recv` takes.
const NUMERIC_NDIGITS_MAX: usize = 3000;
/// Far beyond what numeric holds, and small enough that exponent arithmetic cannot
/// overflow.
const EXPONENT_LIMIT: i64 = 1 << 20;

/// Reads decimal text the way PostgreSQL's `numeric` input does: sign, digits with an
/// optional point, an optional exponent, or NaN and the infinities.
fn parse_numeric(text: &str) -> Result<Numeric, &'static str> {
    match text.to_ascii_lowercase().as_str() {
        "nan" => return Ok(Numeric::NaN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Ok(Numeric::Infinity),
        "-infinity" | "-inf" => return Ok(Numeric::NegativeInfinity),
        _ => {}
    }
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err("it is not a decimal number");
    }
    let exponent = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !all_digits(digits) {
                return Err("its exponent is not a whole number");
            }
            match e.parse::<i64>() {
                Ok(e) if e.abs() <= EXPONENT_LIMIT => e,
                _ => return Err("its exponent is too large"),
            }
        }
    };
    let mut digits: Vec<u8> = whole
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .collect();
    let mut point = whole.len() as i64 + exponent;
    let dscale = (fraction.len() as i64 - exponent).max(0);
    let leading = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..leading);
    point -= leading as i64;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    Ok(Numeric::Finite {
        negative: negative && !digits.is_empty(),
        digits,
        point,
        dscale,
    })
}

/// The value does not fit PostgreSQL's numeric.
#[derive(Debug, PartialEq, Eq)]
struct NumericOutOfRange;

/// Writes numeric's binary form: ndigits, weight, sign and dscale, then base-10000
/// digits, the first of which is worth 10000^weight.
fn write_numeric(numeric: &Numeric, out: &mut BytesMut) -> Result<(), NumericOutOfRange> {
    let special = |out: &mut BytesMut, sign: u16| {
        out.put_i16(0);
        out.put_i16(0);
        out.put_u16(sign);
        out.put_u16(0);
        Ok(())
    };
    let (negative, digits, point, dscale) = match numeric {
        Numeric::NaN => return special(out, NUMERIC_NAN),
        Numeric::Infinity => return special(out, NUMERIC_PINF),
        Numeric::NegativeInfinity => return special(out, NUMERIC_NINF),
        Numeric::Finite {
            negative,
            digits,
            point,
            dscale,
        } => (*negative, digits, *point, *dscale),
    };
    if dscale > NUMERIC_DSCALE_MAX {
        return Err(NumericOutOfRange);
    }
    let (weight, groups) = if digits.is_empty() {
        (0, Vec::new())
    } else {
        // Digit i is worth 10^(point - 1 - i); base-10000 group g holds 10^(4g..4g+3).
        let weight = (point - 1).div_euclid(4);
        let last = (point - digits.len() as i64).div_euclid(4);
        let mut groups = vec![0i16; (weight - last + 1) as usize];
        for (i, &digit) in digits.iter().enumerate() {
            let exponent = point - 1 - i as i64;
            let group = (weight - exponent.div_euclid(4)) as usize;
            groups[group] += i16::from(digit) * 10i16.pow(exponent.rem_euclid(4) as u32);
        }
        (weight, groups)
    };
    if groups.len() > NUMERIC_NDIGITS_MAX {
        return Err(NumericOutOfRange);
    }
    let weight = i16::try_from(weight).map_err(|_| NumericOutOfRange)?;
    let ndigits = i16::try_from(groups.len()).map_err(|_| NumericOutOfRange)?;
    out.put_i16(ndigits);
    out.put_i16(weight);
    out.put_u16(if negative { NUMERIC_NEG } else { NUMERIC_POS });
    out.put_u16(dscale as u16);
    for group in groups {
        out.put_i16(group);
    }
    Ok(())
}

/// Reads numeric's binary form into the text PostgreSQL prints for it, so that no digit
/// is lost to a float and the scale shows as the database keeps it.
fn numeric_text(raw: &[u8]) -> Result<String, &'static str> {
    const MALFORMED: &str = "the server sent a malformed numeric";
    let header = |at: usize| -> Result<[u8; 2], &'static str> {
        raw.get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .ok_or(MALFORMED)
    };
    let ndigits = i16::from_be_bytes(header(0)?);
    let weight = i16::from_be_bytes(header(2)?);
    let sign = u16::from_be_bytes(header(4)?);
    let dscale = u16::from_be_bytes(header(6)?);
    match sign {
        NUMERIC_NAN => return Ok("NaN".into()),
        NUMERIC_PINF => return Ok("Infinity".into()),
        NUMERIC_NINF => return Ok("-Infinity".into()),
        NUMERIC_POS | NUMERIC_NEG => {}
        _ => return Err(MALFORMED),
    }
    let ndigits = usize::try_from(ndigits).map_err(|_| MALFORMED)?;
    if raw.len() != 8 + 2 * ndigits || i64::from(dscale) > NUMERIC_DSCALE_MAX {
        return Err(MALFORMED);
    }
    let digits: Vec<i16> = raw[8..]
        .chunks_exact(2)
        .map(|pair| i16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    if digits.iter().any(|d| !(0..10_000).contains(d)) {
        return Err(MALFORMED);
    }
    let digit = |index: i32| {
        usize::try_from(index)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0)
    };

    let mut text = String::new();
    if sign == NUMERIC_NEG {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit(0).to_string());
        for index in 1..=i32::from(weight) {
            text.push_str(&format!("{:04}", digit(index)));
        }
    }
    let dscale = usize::from(dscale);
    if dscale > 0 {
        text.push('.');
        let mut fraction = String::with_capacity(dscale + 4);
        let mut index = i32::from(weight) + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", digit(index)));
            index += 1;
        }
        fraction.truncate(dscale);
        text.push_str(&fraction);
    }
    Ok(text)
}

/// Why a column's value could not become JSON; the column is added by [`Self::at`].
#[derive(Debug, PartialEq, Eq)]
enum DecodeProblem {
    Unsupported(String),
    Invalid { ty: String, reason: String },
}

impl DecodeProblem {
    fn invalid(ty: &Type, reason: impl Into<String>) -> Self {
        Self::Invalid {
            ty: type_name(ty),
            reason: reason.into(),
        }
    }

    fn at(self, column: &Column) -> ValueError {
        let column = column.name().to_owned();
        match self {
            Self::Unsupported(ty) => ValueError::ColumnTypeUnsupported { column, ty },
            Self::Invalid { ty, reason } => ValueError::ColumnValue { column, ty, reason },
        }
    }
}

/// The JSON for a non-null column value in binary form.
fn decode(ty: &Type, raw: &[u8]) -> Result<Value, DecodeProblem> {
    if let Some(element) = array_element(ty) {
        return decode_array(ty, element, raw);
    }
    let Some(scalar) = scalar(ty) else {
        return Err(DecodeProblem::Unsupported(type_name(ty)));
    };
    let malformed = |_| DecodeProblem::invalid(ty, "the server sent a malformed value");
    let out_of_range = |_| {
        DecodeProblem::invalid(
            ty,
            "its value is outside the years -9999 to 9999 the db capability can return; \
             cast it to text in SQL",
        )
    };
    Ok(match scalar {
        Scalar::Bool => wire::bool_from_sql(raw).map_err(malformed)?.into(),
        Scalar::Int2 => wire::int2_from_sql(raw).map_err(malformed)?.into(),
        Scalar::Int4 => wire::int4_from_sql(raw).map_err(malformed)?.into(),
        Scalar::Int8 => wire::int8_from_sql(raw).map_err(malformed)?.into(),
        Scalar::Oid => wire::oid_from_sql(raw).map_err(malformed)?.into(),
        Scalar::Float4 => {
            let x = wire::float4_from_sql(raw).map_err(malformed)?;
            // Through its shortest text, so that 0.1 reads as 0.1 rather than the f64
            // nearest the f32 nearest 0.1.
            float_json(x.to_string().parse().unwrap_or(f64::from(x)))
        }
        Scalar::Float8 => float_json(wire::float8_from_sql(raw).map_err(malformed)?),
        Scalar::Numeric => {
            Value::String(numeric_text(raw).map_err(|reason| DecodeProblem::invalid(ty, reason))?)
        }
        Scalar::Text => wire::text_from_sql(raw).map_err(malformed)?.into(),
        Scalar::Json | Scalar::Jsonb => {
            Value::from_sql(&json_type(scalar), raw).map_err(malformed)?
        }
        Scalar::Uuid => uuid::Uuid::from_bytes(wire::uuid_from_sql(raw).map_err(malformed)?)
            .hyphenated()
            .to_string()
            .into(),
        Scalar::Timestamptz => match wire::timestamp_from_sql(raw).map_err(malformed)? {
            i64::MAX => "infinity".into(),
            i64::MIN => "-infinity".into(),
            _ => Timestamp::from_sql(ty, raw)
                .map_err(out_of_range)?
                .to_string()
                .into(),
        },
        Scalar::Timestamp => match wire::timestamp_from_sql(raw).map_err(malformed)? {
            i64::MAX => "infinity".into(),
            i64::MIN => "-infinity".into(),
            _ => civil::DateTime::from_sql(ty, raw)
                .map_err(out_of_range)?
                .to_string()
                .into(),
        },
        Scalar::Date => match wire::date_from_sql(raw).map_err(malformed)? {
            i32::MAX => "infinity".into(),
            i32::MIN => "-infinity".into(),
            _ => civil::Date::from_sql(ty, raw)
                .map_err(out_of_range)?
                .to_string()
                .into(),
        },
        Scalar::Time => match wire::time_from_sql(raw).map_err(malformed)? {
            // PostgreSQL allows the end of the day, which a civil time cannot hold.
            MICROS_PER_DAY => "24:00:00".into(),
            _ => civil::Time::from_sql(ty, raw)
                .map_err(malformed)?
                .to_string()
                .into(),
        },
        Scalar::Bytea => format!("\\x{}", hex::encode(wire::bytea_from_sql(raw))).into(),
        Scalar::Void => Value::Null,
    })
}

/// JSON has no NaN or infinities; they come back as the strings binding accepts.
fn float_json(x: f64) -> Value {
    match Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None if x.is_nan() => "NaN".into(),
        None if x > 0.0 => "Infinity".into(),
        None => "-Infinity".into(),
    }
}

/// Arrays come back as nested JSON arrays, one level per dimension; lower bounds other
/// than 1 are not kept.
fn decode_array(ty: &Type, element: &Type, raw: &[u8]) -> Result<Value, DecodeProblem> {
    let malformed = |_| DecodeProblem::invalid(ty, "the server sent a malformed array");
    let array = wire::array_from_sql(raw).map_err(malformed)?;
    let lengths: Vec<usize> = array
        .dimensions()
        .map(|dimension| Ok(usize::try_from(dimension.len)?))
        .collect()
        .map_err(malformed)?;
    if lengths.is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    let mut values = array.values();
    let mut elements = Vec::new();
    while let Some(value) = values.next().map_err(malformed)? {
        elements.push(match value {
            None => Value::Null,
            Some(bytes) => decode(element, bytes)?,
        });
    }
    Ok(nest(&lengths, &mut elements.into_iter()))
}

fn nest(lengths: &[usize], elements: &mut impl Iterator<Item = Value>) -> Value {
    match lengths.split_first() {
        None => elements.next().unwrap_or(Value::Null),
        Some((&length, inner)) => {
            Value::Array((0..length).map(|_| nest(inner, elements)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;
    use serde_json::json;

    use super::*;

    fn numeric_bytes(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend(ndigits.to_be_bytes());
        raw.extend(weight.to_be_bytes());
        raw.extend(sign.to_be_bytes());
        raw.extend(dscale.to_be_bytes());
        for digit in digits {
            raw.extend(digit.to_be_bytes());
        }
        raw
    }

    fn encoded(ty: &Type, value: Value) -> Result<Vec<u8>, ValueError> {
        let mut out = BytesMut::new();
        let values = [value];
        Param::list(&values)[0].encode(ty, &mut out)?;
        Ok(out.to_vec())
    }

    fn error(ty: &Type, value: Value) -> String {
        encoded(ty, value).unwrap_err().to_string()
    }

    #[rstest]
    #[case::positive_with_fraction(numeric_bytes(3, 1, NUMERIC_POS, 4, &[1, 2345, 6789]), "12345.6789")]
    #[case::small_negative(numeric_bytes(1, -1, NUMERIC_NEG, 3, &[10]), "-0.001")]
    #[case::zero(numeric_bytes(0, 0, NUMERIC_POS, 0, &[]), "0")]
    #[case::zero_with_scale(numeric_bytes(0, 0, NUMERIC_POS, 2, &[]), "0.00")]
    #[case::trailing_zero_groups_implied(numeric_bytes(1, 5, NUMERIC_POS, 0, &[1]), "100000000000000000000")]
    #[case::scale_longer_than_digits(numeric_bytes(2, 0, NUMERIC_POS, 6, &[3, 1400]), "3.140000")]
    #[case::leading_zero_groups_implied(numeric_bytes(1, -3, NUMERIC_POS, 14, &[5]), "0.00000000000500")]
    #[case::inner_zero_digit(numeric_bytes(2, 2, NUMERIC_POS, 0, &[7, 0]), "700000000")]
    #[case::nan(numeric_bytes(0, 0, NUMERIC_NAN, 0, &[]), "NaN")]
    #[case::infinity(numeric_bytes(0, 0, NUMERIC_PINF, 0, &[]), "Infinity")]
    #[case::negative_infinity(numeric_bytes(0, 0, NUMERIC_NINF, 0, &[]), "-Infinity")]
    fn numeric_binary_reads_as_postgres_prints_it(#[case] raw: Vec<u8>, #[case] text: &str) {
        assert_eq!(numeric_text(&raw).unwrap(), text);
    }

    #[rstest]
    #[case::too_short(vec![0, 1, 0, 0])]
    #[case::digit_count_disagrees(numeric_bytes(2, 0, NUMERIC_POS, 0, &[1]))]
    #[case::digit_over_9999(numeric_bytes(1, 0, NUMERIC_POS, 0, &[10_000]))]
    #[case::unknown_sign(numeric_bytes(0, 0, 0x1234, 0, &[]))]
    fn malformed_numeric_binary_is_an_error(#[case] raw: Vec<u8>) {
        assert_eq!(
            numeric_text(&raw),
            Err("the server sent a malformed numeric")
        );
    }

    #[rstest]
    #[case::integer("12345.6789")]
    #[case::negative_fraction("-0.001")]
    #[case::zero("0")]
    #[case::scaled_zero("0.000")]
    #[case::trailing_zeros_kept("1.50")]
    #[case::large("123456789012345678901234567890")]
    #[case::tiny("0.000000000000000000012")]
    #[case::group_boundary("10000.0001")]
    #[case::nan("NaN")]
    #[case::infinity("Infinity")]
    #[case::negative_infinity("-Infinity")]
    fn numeric_text_survives_encoding_and_decoding(#[case] text: &str) {
        let mut out = BytesMut::new();
        write_numeric(&parse_numeric(text).unwrap(), &mut out).unwrap();
        assert_eq!(numeric_text(&out).unwrap(), text);
    }

    #[rstest]
    #[case::exponent("1e20", "100000000000000000000")]
    #[case::negative_exponent("1.5e-7", "0.00000015")]
    #[case::leading_zeros("007.10", "7.10")]
    #[case::no_whole_part(".5", "0.5")]
    #[case::no_fraction("5.", "5")]
    #[case::plus_sign("+2", "2")]
    #[case::negative_zero("-0", "0")]
    fn numeric_input_reads_like_postgres_numeric_in(#[case] input: &str, #[case] text: &str) {
        let mut out = BytesMut::new();
        write_numeric(&parse_numeric(input).unwrap(), &mut out).unwrap();
        assert_eq!(numeric_text(&out).unwrap(), text);
    }

    #[test]
    fn numeric_is_written_in_base_10000_groups() {
        let mut out = BytesMut::new();
        write_numeric(&parse_numeric("-12345.6789").unwrap(), &mut out).unwrap();
        assert_eq!(
            out.to_vec(),
            numeric_bytes(3, 1, NUMERIC_NEG, 4, &[1, 2345, 6789])
        );
    }

    #[test]
    fn numeric_beyond_postgres_limits_is_out_of_range() {
        let mut out = BytesMut::new();
        let huge = parse_numeric("1e200000").unwrap();
        assert_eq!(write_numeric(&huge, &mut out), Err(NumericOutOfRange));
        let fine = parse_numeric("1e-20000").unwrap();
        assert_eq!(write_numeric(&fine, &mut out), Err(NumericOutOfRange));
    }

    #[rstest]
    #[case::empty_string("", Ok(vec![]))]
    #[case::blank("  ", Ok(vec![]))]
    #[case::empty_array("[]", Ok(vec![]))]
    #[case::values(r#"[1, "a", null]"#, Ok(vec![json!(1), json!("a"), Value::Null]))]
    #[case::object(r#"{"a": 1}"#, Err("params must be a JSON array"))]
    #[case::number("1", Err("params must be a JSON array"))]
    fn params_are_a_json_array(#[case] text: &str, #[case] expected: Result<Vec<Value>, &str>) {
        let parsed = parse_params(text).map_err(|error| error.to_string());
        assert_eq!(parsed, expected.map_err(str::to_owned));
    }

    #[test]
    fn params_that_are_not_json_say_so() {
        let error = parse_params("[1,").unwrap_err().to_string();
        assert!(
            error.starts_with("params must be a JSON array: "),
            "{error}"
        );
    }

    #[rstest]
    #[case::bool(Type::BOOL, json!(true), vec![1])]
    #[case::int2(Type::INT2, json!(-2), vec![0xff, 0xfe])]
    #[case::int4(Type::INT4, json!(258), vec![0, 0, 1, 2])]
    #[case::int8_from_whole_float(Type::INT8, json!(1e3), 1000i64.to_be_bytes().to_vec())]
    #[case::oid(Type::OID, json!(4_000_000_000u32), 4_000_000_000u32.to_be_bytes().to_vec())]
    #[case::float8(Type::FLOAT8, json!(0.5), 0.5f64.to_be_bytes().to_vec())]
    #[case::float4_nan(Type::FLOAT4, json!("NaN"), f32::NAN.to_be_bytes().to_vec())]
    #[case::text(Type::TEXT, json!("hé"), "hé".as_bytes().to_vec())]
    #[case::jsonb(Type::JSONB, json!({"a": [1]}), b"\x01{\"a\":[1]}".to_vec())]
    #[case::json(Type::JSON, json!("s"), b"\"s\"".to_vec())]
    #[case::uuid(
        Type::UUID,
        json!("67e55044-10b1-426f-9247-bb680e5fe0c8"),
        uuid::uuid!("67e55044-10b1-426f-9247-bb680e5fe0c8").as_bytes().to_vec()
    )]
    #[case::timestamptz_at_epoch(Type::TIMESTAMPTZ, json!("2000-01-01T01:00:00+01:00"), vec![0; 8])]
    #[case::timestamp(Type::TIMESTAMP, json!("2000-01-01T00:00:01"), 1_000_000i64.to_be_bytes().to_vec())]
    #[case::timestamp_last_microsecond(
        Type::TIMESTAMP,
        json!("9999-12-31T23:59:59.999999"),
        252_455_615_999_999_999i64.to_be_bytes().to_vec()
    )]
    #[case::date_before_epoch(Type::DATE, json!("1999-12-31"), (-1i32).to_be_bytes().to_vec())]
    #[case::date_infinity(Type::DATE, json!("infinity"), i32::MAX.to_be_bytes().to_vec())]
    #[case::date_last(Type::DATE, json!("9999-12-31"), 2_921_939i32.to_be_bytes().to_vec())]
    #[case::time(Type::TIME, json!("00:00:00.000002"), 2i64.to_be_bytes().to_vec())]
    #[case::bytea(Type::BYTEA, json!("\\x00ff"), vec![0, 0xff])]
    #[case::empty_array(Type::INT4_ARRAY, json!([]), vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23])]
    fn params_encode_in_binary_form(
        #[case] ty: Type,
        #[case] value: Value,
        #[case] bytes: Vec<u8>,
    ) {
        assert_eq!(encoded(&ty, value).unwrap(), bytes);
    }

    #[test]
    fn null_is_sql_null_for_any_type() {
        for ty in [Type::INT4, Type::POINT, Type::JSONB] {
            let mut out = BytesMut::new();
            let values = [Value::Null];
            assert!(matches!(
                Param::list(&values)[0].encode(&ty, &mut out),
                Ok(IsNull::Yes)
            ));
            assert!(out.is_empty());
        }
    }

    #[test]
    fn array_params_hold_their_elements_and_nulls() {
        let bytes = encoded(&Type::INT2_ARRAY, json!([7, null])).unwrap();
        let expected: Vec<u8> = [
            &1i32.to_be_bytes()[..],
            &1i32.to_be_bytes(),
            &Type::INT2.oid().to_be_bytes(),
            &2i32.to_be_bytes(),
            &1i32.to_be_bytes(),
            &2i32.to_be_bytes(),
            &7i16.to_be_bytes(),
            &(-1i32).to_be_bytes(),
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(decode(&Type::INT2_ARRAY, &bytes).unwrap(), json!([7, null]));
    }

    #[rstest]
    #[case::string_for_int4(
        Type::INT4, json!("12"),
        "parameter $1 has type int4 and needs an integer, but the string \"12\" was given"
    )]
    #[case::fraction_for_int8(
        Type::INT8, json!(1.5),
        "parameter $1 has type int8 and needs an integer, but the number 1.5 was given"
    )]
    #[case::int2_out_of_range(
        Type::INT2, json!(70000),
        "parameter $1 has type int2, and 70000 is out of range for it"
    )]
    #[case::int8_out_of_range(
        Type::INT8, json!(9_223_372_036_854_775_808u64),
        "parameter $1 has type int8, and 9223372036854775808 is out of range for it"
    )]
    #[case::negative_oid(
        Type::OID, json!(-1),
        "parameter $1 has type oid, and -1 is out of range for it"
    )]
    #[case::float4_out_of_range(
        Type::FLOAT4, json!(1e300),
        "parameter $1 has type float4, and 1e+300 is out of range for it"
    )]
    #[case::number_for_text(
        Type::TEXT, json!(5),
        "parameter $1 has type text and needs a string, but the number 5 was given"
    )]
    #[case::nul_in_text(
        Type::VARCHAR, json!("a\u{0}b"),
        "parameter $1 has type varchar and needs a string; the string \"a\\0b\" is not one: \
         PostgreSQL text cannot hold the NUL character"
    )]
    #[case::bool_for_numeric(
        Type::NUMERIC, json!(true),
        "parameter $1 has type numeric and needs a number or a numeric string, but true was given"
    )]
    #[case::word_for_numeric(
        Type::NUMERIC, json!("ten"),
        "parameter $1 has type numeric and needs a number or a numeric string; \
         the string \"ten\" is not one: it is not a decimal number"
    )]
    #[case::numeric_out_of_range(
        Type::NUMERIC, json!("1e200000"),
        "parameter $1 has type numeric, and the string \"1e200000\" is out of range for it"
    )]
    #[case::object_for_bool(
        Type::BOOL, json!({}),
        "parameter $1 has type bool and needs true or false, but an object was given"
    )]
    #[case::timestamptz_without_offset(
        Type::TIMESTAMPTZ, json!("2026-11-22T07:37:16"),
        "parameter $1 has type timestamptz and needs an RFC 3339 timestamp string with an \
         offset, like \"2026-11-22T07:37:16Z\"; the string \"2026-11-22T07:37:16\" is not one"
    )]
    #[case::nanoseconds(
        Type::TIMESTAMP, json!("2026-11-22T07:37:16.1234567"),
        "parameter $1 has type timestamp and needs a date and time string, like \
         \"2026-11-22T07:37:16\"; the string \"2026-11-22T07:37:16.1234567\" is not one: \
         PostgreSQL keeps at most 6 fractional digits of a second"
    )]
    #[case::bad_uuid(
        Type::UUID, json!("nope"),
        "parameter $1 has type uuid and needs a UUID string; the string \"nope\" is not one"
    )]
    #[case::bytea_without_prefix(
        Type::BYTEA, json!("00ff"),
        "parameter $1 has type bytea and needs a string of hex digits after \\x, like \
         \"\\x01ff\"; the string \"00ff\" is not one: it does not start with \\x"
    )]
    #[case::scalar_for_array(
        Type::INT4_ARRAY, json!(1),
        "parameter $1 has type int4[] and needs a JSON array, but the number 1 was given"
    )]
    #[case::bad_array_element(
        Type::TEXT_ARRAY, json!(["a", 2]),
        "parameter $1 element 2 has type text and needs a string, but the number 2 was given"
    )]
    #[case::unsupported_type(
        Type::POINT, json!("(1,2)"),
        "parameter $1 has type point, which the db capability cannot bind; \
         cast it in SQL, e.g. $1::text"
    )]
    #[case::unsupported_array_type(
        Type::INTERVAL_ARRAY, json!([]),
        "parameter $1 has type interval[], which the db capability cannot bind; \
         cast it in SQL, e.g. $1::text"
    )]
    fn bad_params_are_errors_naming_the_parameter_and_types(
        #[case] ty: Type,
        #[case] value: Value,
        #[case] message: &str,
    ) {
        let error = error(&ty, value);
        assert!(error.starts_with(message), "{error}");
    }

    #[test]
    fn long_strings_are_cut_short_in_errors() {
        let error = error(&Type::INT4, json!("x".repeat(100)));
        assert!(error.ends_with(&format!("the string \"{}…\" was given", "x".repeat(40))));
    }

    #[test]
    fn check_params_counts_then_checks_each_value() {
        let types = [Type::INT4, Type::TEXT];
        let error = check_params(&types, &[json!(1), json!("a"), json!(3)]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the statement takes 2 parameters, 3 given"
        );
        let error = check_params(&types, &[json!(1), json!(2)]).unwrap_err();
        assert!(
            error.to_string().starts_with("parameter $2 has type text"),
            "{error}"
        );
        check_params(&types, &[json!(1), Value::Null]).unwrap();
    }

    #[rstest]
    #[case::bool(Type::BOOL, vec![1], json!(true))]
    #[case::int2(Type::INT2, vec![0xff, 0xfe], json!(-2))]
    #[case::int8(Type::INT8, i64::MIN.to_be_bytes().to_vec(), json!(i64::MIN))]
    #[case::oid(Type::OID, u32::MAX.to_be_bytes().to_vec(), json!(u32::MAX))]
    #[case::float4_shortest(Type::FLOAT4, 0.1f32.to_be_bytes().to_vec(), json!(0.1))]
    #[case::float8_infinity(Type::FLOAT8, f64::NEG_INFINITY.to_be_bytes().to_vec(), json!("-Infinity"))]
    #[case::name(Type::NAME, b"pg".to_vec(), json!("pg"))]
    #[case::jsonb(Type::JSONB, b"\x01[1,\"a\"]".to_vec(), json!([1, "a"]))]
    #[case::timestamptz(
        Type::TIMESTAMPTZ,
        (1_000_000i64 * 86_400 + 123_456).to_be_bytes().to_vec(),
        json!("2000-01-02T00:00:00.123456Z")
    )]
    #[case::timestamp_infinity(Type::TIMESTAMP, i64::MIN.to_be_bytes().to_vec(), json!("-infinity"))]
    #[case::timestamp_last_microsecond(
        Type::TIMESTAMP,
        252_455_615_999_999_999i64.to_be_bytes().to_vec(),
        json!("9999-12-31T23:59:59.999999")
    )]
    #[case::date(Type::DATE, 366i32.to_be_bytes().to_vec(), json!("2001-01-01"))]
    #[case::time_end_of_day(Type::TIME, MICROS_PER_DAY.to_be_bytes().to_vec(), json!("24:00:00"))]
    #[case::bytea(Type::BYTEA, vec![0xde, 0xad], json!("\\xdead"))]
    fn columns_decode_to_json(#[case] ty: Type, #[case] raw: Vec<u8>, #[case] value: Value) {
        assert_eq!(decode(&ty, &raw).unwrap(), value);
    }

    #[test]
    fn columns_out_of_jiff_range_ask_for_a_cast() {
        let far = (i64::MAX - 1).to_be_bytes();
        let problem = decode(&Type::TIMESTAMPTZ, &far).unwrap_err();
        assert!(
            matches!(&problem, DecodeProblem::Invalid { reason, .. } if reason.contains("cast it to text")),
            "{problem:?}"
        );
    }

    #[rstest]
    #[case::trailing_bytes([&1i32.to_be_bytes()[..], &[0; 12], &[0; 4], &[9]].concat())]
    #[case::negative_dimension_count((-1i32).to_be_bytes().repeat(3))]
    #[case::negative_length([&1i32.to_be_bytes()[..], &[0; 8], &(-1i32).to_be_bytes(), &[0; 4]].concat())]
    #[case::element_past_the_end([&1i32.to_be_bytes()[..], &[0; 8], &1i32.to_be_bytes(), &[0; 4], &4i32.to_be_bytes(), &[0; 2]].concat())]
    fn malformed_arrays_are_errors_not_panics(#[case] raw: Vec<u8>) {
        assert_eq!(
            decode(&Type::INT2_ARRAY, &raw),
            Err(DecodeProblem::invalid(
                &Type::INT2_ARRAY,
                "the server sent a malformed array"
            ))
        );
    }

    #[test]
    fn a_time_past_the_end_of_the_day_is_malformed() {
        let raw = (MICROS_PER_DAY + 1).to_be_bytes();
        assert_eq!(
            decode(&Type::TIME, &raw),
            Err(DecodeProblem::invalid(
                &Type::TIME,
                "the server sent a malformed value"
            ))
        );
    }

    #[test]
    fn malformed_columns_are_errors_not_panics() {
        for ty in [
            Type::INT4,
            Type::UUID,
            Type::JSONB,
            Type::INT4_ARRAY,
            Type::TIME,
        ] {
            assert!(
                matches!(decode(&ty, &[1, 2, 3]), Err(DecodeProblem::Invalid { .. })),
                "{ty}"
            );
        }
    }
}
