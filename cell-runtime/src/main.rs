use std::path::PathBuf;
use std::process::ExitCode;

use cellbus_contracts::error_chain;
use cellbus_contracts::manifest::Object;
use cellbus_control::logs::LogArgs;
use cellbus_control::signature;
use cellbus_control::NatsArgs;
use cellbus_runtime::{bench, call, serve, signing, up};
use clap::{Parser, Subcommand};

/// Cellbus: small sandboxed services on NATS.
#[derive(Parser)]
#[command(name = "cellbus", version, about)]
struct Args {
    #[command(flatten)]
    logs: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a pool's cells (what the runtime pods run).
    Serve(serve::ServeArgs),
    /// Run the Cells and CellPools of a directory locally until Ctrl-C.
    Up(up::UpArgs),
    /// Send one request and print the reply.
    Call(call::CallArgs),
    /// Work with modules in the cbs-modules object store.
    Module {
        #[command(subcommand)]
        command: ModuleCommand,
    },
    /// Measure request/reply through the runtime against raw NATS, side by side.
    Bench(bench::BenchArgs),
    /// Run PROGRAM confined as a process cell (the runtime starts each process cell this
    /// way; not meant to be run by hand).
    #[command(hide = true)]
    Sandbox {
        #[command(flatten)]
        limits: cellbus_runtime::process::SandboxLimits,
        #[command(flatten)]
        confinement: cellbus_runtime::process::sandbox::Confinement,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Check Cell and CellPool manifests as a cluster would judge them.
    Check {
        /// Manifest files or directories (walked for .yaml and .yml files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModuleCommand {
    /// Store a module under its sha256 digest and print the digest.
    Push {
        #[command(flatten)]
        nats: NatsArgs,
        /// The module file.
        file: PathBuf,
    },
    /// Make a key pair for signing modules.
    Keygen(signing::KeygenArgs),
    /// Write a detached signature over a module's digest (and service, if given).
    Sign(signing::SignArgs),
    /// Check a module against its signature and trusted keys, and print the signer.
    Verify(signing::VerifyArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread exists: the sandbox blocks signals for the whole process.
    if let Command::Sandbox {
        limits,
        confinement,
        command,
    } = &args.command
    {
        return cellbus_runtime::process::sandbox::run(limits, confinement, command);
    }
    // Servers log what they do; one-shot commands only what went wrong.
    let default = match args.command {
        Command::Serve(_) | Command::Up(_) => "info",
        _ => "warn",
    };
    cellbus_control::logs::init(args.logs.format, default);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    runtime.block_on(run(args.command))
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve(args) => report(serve::run(args).await),
        Command::Up(args) => report(run_up(args).await),
        Command::Call(args) => match call::run(&args).await {
            Ok(Ok(payload)) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&payload).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Ok(Err(error)) => {
                eprintln!("error {}: {}", error.code.as_str(), error.message);
                if let Some(details) = error.details {
                    eprintln!(
                        "{}",
                        serde_json::to_string_pretty(&details).unwrap_or_default()
                    );
                }
                ExitCode::FAILURE
            }
            Err(error) => fail(&error),
        },
        Command::Module {
            command: ModuleCommand::Push { nats, file },
        } => report(push(&nats, &file).await.map(|digest| println!("{digest}"))),
        Command::Module {
            command: ModuleCommand::Keygen(args),
        } => report(signing::keygen(&args).map(|(private, public, key_id)| {
            println!("private {}", private.display());
            println!("public  {}", public.display());
            println!("keyId   {key_id}");
        })),
        Command::Module {
            command: ModuleCommand::Sign(args),
        } => report(signing::sign(&args).map(|(out, document)| {
            println!("signed  {} -> {}", args.file.display(), out.display());
            println!("digest  {}", document.claims.digest);
            match &document.signed_by {
                signature::SignedBy::Key(key_id) => println!("keyId   {key_id}"),
                signature::SignedBy::Certificates(chain) => {
                    println!("chain   {} certificate(s)", chain.len())
                }
            }
        })),
        Command::Module {
            command: ModuleCommand::Verify(args),
        } => report(
            signing::verify(&args)
                .map(|signer| println!("ok      {} signed by {signer}", args.file.display())),
        ),
        Command::Bench(args) => report(
            bench::run(&args)
                .await
                .map(|r| print!("{}", r.table(&args))),
        ),
        Command::Check { paths } => check(&paths),
        Command::Sandbox { .. } => unreachable!("the sandbox runs before the async runtime"),
    }
}

async fn run_up(args: up::UpArgs) -> Result<(), up::UpError> {
    let up = up::start(&args).await?;
    // Scripts read this line for NATS_URL; a URL with credentials is shown without them.
    println!("NATS    {}", cellbus_control::redact_url(&up.nats_url));
    for line in &up.report {
        println!("{line}");
    }
    let mut stop = cellbus_control::StopSignals::install();
    println!("ready   (Ctrl-C stops)");
    stop.recv().await;
    cellbus_runtime::stop_within_grace(up.shutdown()).await;
    println!("stopped");
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nats(#[from] cellbus_control::Error),
}

async fn push(nats: &NatsArgs, file: &PathBuf) -> Result<String, PushError> {
    let bytes = std::fs::read(file).map_err(|source| PushError::Read {
        path: file.clone(),
        source,
    })?;
    let client = cellbus_control::connect_once(nats, "cellbus module push").await?;
    let buckets = cellbus_control::ensure_buckets(&async_nats::jetstream::new(client)).await?;
    Ok(cellbus_control::push_module(&buckets.modules, &bytes).await?)
}

fn report<E: std::error::Error>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("cellbus: {}", error_chain(error));
    ExitCode::FAILURE
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let checked = match cellbus_control::manifests::check(paths) {
        Ok(checked) => checked,
        Err(error) => return fail(&error),
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
