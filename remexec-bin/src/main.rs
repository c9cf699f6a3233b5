//! The `remexec` binary. See `remexec --help`.

use clap::Parser;
use remexec_bin::cli::{Cli, Command};
use remexec_bin::serve::{BoundServer, shutdown_signal};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REMEXEC_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("remexec: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let config = args.resolve()?;
                let server = BoundServer::bind(&config)
                    .await
                    .map_err(|e| e.to_string())?;
                let addr = server.local_addr().map_err(|e| e.to_string())?;
                tracing::info!(data_dir = %config.data_dir.display(), "serving");
                println!("remexec: listening on {addr}");
                server
                    .serve(shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remexec: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
