use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use rollcall::app::Application;
use rollcall::config::{Cli, Command, one_line_error};
use rollcall::{demo, telemetry};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            eprintln!("rollcall: {}", one_line_error(&e));
            return ExitCode::from(2);
        }
    };
    let (settings, demo_args) = match cli.command {
        Some(Command::Demo(args)) => (cli.settings, Some(args)),
        Some(Command::Serve(settings)) => (*settings, None),
        None => (cli.settings, None),
    };
    if let Err(line) = settings.validate() {
        eprintln!("rollcall: {line}");
        return ExitCode::from(2);
    }
    telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollcall: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match demo_args {
            // The replicas log to the demo's pipes: they write what the demo itself would.
            Some(args) => demo::run(args, telemetry::format_or_default(settings.log_format))
                .await
                .map_err(|e| e.to_string()),
            None => match Application::build(settings).await {
                Ok(app) => {
                    app.run(telemetry::shutdown_signal()).await;
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollcall: {e}");
            ExitCode::FAILURE
        }
    }
}
