//! The `rnnlab` command: parse, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use rnnlab::cli::Cli;

fn main() -> ExitCode {
    rnnlab::resources::run_candle_elementwise_inline();
    rnnlab::resources::count_cores_for_candle_once();
    rnnlab::resources::keep_freed_memory();
    let cli = Cli::parse();
    rnnlab::init_logging(cli.verbose);
    match rnnlab::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(rnnlab::exit_code(&err))
        }
    }
}
