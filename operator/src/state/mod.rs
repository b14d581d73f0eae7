//! What the operator knows and decides, with no I/O: the objects as the watches show
//! them ([`observed`]) and their [`index`], where each Cell runs ([`scheduling`]), the
//! conditions it reports ([`conditions`], [`readiness`]), the names of what it makes
//! ([`names`]) and the spacing of retries ([`backoff`]). Everything here is tested
//! without a cluster or a server; `controller` does the I/O.

pub mod backoff;
pub mod conditions;
pub mod index;
pub mod names;
pub mod observed;
pub mod readiness;
pub mod scheduling;
