use std::path::PathBuf;
use std::process::ExitCode;

use cellbus_contracts::manifest::Object;
use clap::{Parser, Subcommand};

/// Cellbus: small sandboxed services on NATS.
#[derive(Parser)]
#[command(name = "cellbus", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check Cell and CellPool manifests as a cluster would judge them.
    Check {
        /// Manifest files or directories (walked for .yaml and .yml files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Args::parse().command {
        Command::Check { paths } => check(&paths),
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let checked = match cellbus_runtime::manifests::check(paths) {
        Ok(checked) => checked,
        Err(error) => {
            eprintln!("cellbus: {}", cellbus_contracts::error_chain(&error));
            return ExitCode::FAILURE;
        }
    };
    for object in &checked.objects {
        let at = match object {
            Object::Cell { at, .. } | Object::CellPool { at, .. } => at,
        };
        println!("ok      {at}");
    }
    for other in &checked.others {
        println!("skipped {other} (not a Cellbus kind)");
    }
    for error in &checked.errors {
        eprintln!("invalid {error}");
    }
    if checked.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
