use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = crossway_proxy::Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    crossway_logging::init(&cli.log);
    match crossway_proxy::run(cli) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
