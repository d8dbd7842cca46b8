use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = crossway_agent::Cli::parse();
    crossway_logging::init(&cli.log);
    match crossway_agent::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
