//! rnnlab's command-line runner: configuration, data export, (later) sweeps, training,
//! storage, plots and reports. `main.rs` only parses and maps errors to exit codes.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod compact;
pub mod config;
pub mod data;
pub mod error;
pub mod loss;
pub mod optim;
pub mod plan;
pub mod plot;
pub mod report;
pub mod resources;
pub mod results;
pub mod run;
pub mod slurm;
pub mod stats;
pub mod store;
pub mod sweep;
pub mod train;
pub mod tune;

use std::io::IsTerminal;

use cli::{Cli, Command, DataCommand};
pub use error::UsageError;

/// The commit this binary was built from (`<sha>`, `<sha>-dirty` or `unknown`; see
/// `build.rs`), recorded in every `manifest.yaml`.
pub const BUILD_COMMIT: &str = env!("RNNLAB_BUILD_COMMIT");

/// What `rnnlab --version` prints: the package version and the build commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RNNLAB_BUILD_COMMIT"),
    ")"
);

/// The process exit code for an error returned by [`run()`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}

/// Logs to stderr through `tracing`: `RUST_LOG` wins, otherwise `-v` raises the level
/// from warnings to info (`-v`) or debug (`-vv`).
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data { command } => match command {
            DataCommand::Export(args) => data::export(&args),
            DataCommand::Show(args) => data::show(&args),
        },
        Command::Plan(args) => plan::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Status(args) => run::status(&args),
        Command::Plot(args) => plot::plot(&args.dir),
        Command::Report(args) => report::report(&args.dir),
        Command::Slurm(args) => slurm::submit(&args),
        Command::Bench(args) => bench::run(&args),
    }
}
