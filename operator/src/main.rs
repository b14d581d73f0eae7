use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Cellbus operator.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Cell and CellPool CRDs as YAML.
    Crdgen {
        /// Instead of printing, write the CRDs to crds/ and the JSON Schemas to schemas/
        /// under --root.
        #[arg(long)]
        write: bool,
        /// Repository root to write under.
        #[arg(long, default_value = ".", requires = "write")]
        root: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Crdgen { write: false, .. } => {
            cellbus_operator::crdgen::crds_stream().map(|yaml| print!("{yaml}"))
        }
        Command::Crdgen { write: true, root } => {
            cellbus_operator::crdgen::write(&root).map(|paths| {
                for path in paths {
                    println!("wrote {}", path.display());
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cellbus-operator: {}", report(&error));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
