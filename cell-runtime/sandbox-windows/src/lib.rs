//! The Windows sandbox of process cells: one Job Object per cell, holding its memory,
//! process and CPU limits, and one AppContainer per cell, holding what it may reach (its
//! own home and tmp, the files it is given, the network only when granted), with every
//! process of the cell started inside both.
//!
//! [`JobPolicy`] turns the Kubernetes quantities of a Cell's limits into the raw values of
//! the job's information classes ([`JobLimits`]), and [`command_line`] quotes arguments the
//! way Windows splits them; both are plain code, tested on any platform. [`Job`] makes the
//! system calls and exists only on Windows. [`shim`] reads the flags of `cellbus-sandbox`,
//! the program the runtime starts each Windows process cell under. The crate builds with Rust 1.63 and depends on
//! `windows-sys` alone, so Debian's mingw toolchain can build it for the Wine check.
#![deny(unsafe_code)]

pub mod cmdline;
pub mod container;
pub mod policy;
pub mod quantity;
pub mod shim;

#[cfg(windows)]
#[allow(unsafe_code)]
mod appcontainer;
#[cfg(windows)]
#[allow(unsafe_code)]
mod job;

#[cfg(windows)]
pub use appcontainer::{current_token, AppContainer, ContainerError, TokenError, TokenFacts};
pub use cmdline::{command_line, CommandLineError};
pub use container::{capabilities, environment_block, Capability, Confinement, Grant};
#[cfg(windows)]
pub use job::{
    logical_processors, supervise, Accounting, CellStart, InfoClass, Job, JobError, Process,
};
pub use policy::{
    cpu_rate, CpuRateLimit, ExtendedLimits, Field, JobLimits, JobPolicy, PolicyError,
};
