use std::path::PathBuf;
use std::process::ExitCode;

use cellbus_control::logs::LogArgs;
use clap::{Parser, Subcommand};

/// The Cellbus operator.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    logs: LogArgs,
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
    /// Run the controllers: reconcile Cells and CellPools in the cluster the kubeconfig or
    /// the pod's service account points at.
    Run(Box<cellbus_operator::run::RunArgs>),
    /// Print, without a cluster, the objects the operator would apply for Cell and
    /// CellPool manifests, with pool assignments and streams as comments.
    Render {
        /// A manifest file or a directory of them (walked for .yaml and .yml); repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        config: Box<cellbus_operator::Config>,
    },
}

fn run(args: cellbus_operator::run::RunArgs, logs: LogArgs) -> Result<(), cellbus_operator::Error> {
    cellbus_control::logs::init(logs.format, "info,kube=warn");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| cellbus_operator::Error::Runtime { source })?
        .block_on(cellbus_operator::run::run(args))
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
        Command::Run(run_args) => run(*run_args, args.logs),
        Command::Render { files, config } => {
            cellbus_operator::render::render_paths(&files, &config).map(|yaml| print!("{yaml}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "cellbus-operator: {}",
                cellbus_contracts::error_chain(&error)
            );
            ExitCode::FAILURE
        }
    }
}
