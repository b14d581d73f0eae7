//! The Cellbus cell runtime and the `cellbus` command line.

#![forbid(unsafe_code)]

pub mod manifests;
