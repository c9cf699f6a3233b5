//! The `remexec` binary. See `remexec --help`.

use clap::Parser;
use remexec_bin::cli::{Cli, Command, TlsCommand};
use remexec_bin::security::Security;
use remexec_bin::serve::{BoundServer, Role, reload_on_sighup, run_worker, shutdown_signal};
use remexec_core::{Error, Message, Result};

fn main() -> std::process::ExitCode {
    // The supervisor of one action (started by this binary's worker): no runtime, no logs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == remexec_bin::sandbox::SUPERVISE)
    {
        return remexec_worker::supervise(&args[2..]);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("remexec: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The daemons' configuration comes first: it says where trace spans go.
    let config = match &cli.command {
        Command::Serve(args) | Command::Scheduler(args) => Some(args.resolve()),
        Command::Worker(args) => Some(args.resolve()),
        _ => None,
    };
    let tracing = match &config {
        Some(Ok(config)) => {
            let _entered = runtime.enter();
            let exporters = remexec_core::export::Exporters {
                otlp: config.telemetry.otlp_endpoint.clone(),
                zipkin: config.telemetry.zipkin_endpoint.clone(),
            };
            match remexec_core::export::Tracing::start(&exporters) {
                Ok(tracing) => tracing,
                Err(e) => {
                    eprintln!("remexec: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    let (tracing, tracer) = tracing.unzip();
    remexec_bin::logging::init(cli.log_format, tracer);
    let config = config.unwrap_or_else(|| Err("no configuration".into()));
    let result = runtime.block_on(run(cli.command, config));
    if let Some(tracing) = tracing {
        // Blocking, and the exporters' clients need the runtime: before it stops.
        tracing.shutdown();
    }
    // Do not wait for idle blocking threads (file I/O) once the work is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("remexec: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// This binary as the supervisor of actions: `remexec supervise`.
fn supervisor() -> Result<Vec<std::ffi::OsString>> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the remexec binary", e))?;
    Ok(vec![exe.into(), remexec_bin::sandbox::SUPERVISE.into()])
}

/// Prints `text`; exit code 0.
fn print(text: Result<String>) -> Result<u8> {
    print!("{}", text?);
    Ok(0)
}

/// Runs a subcommand; returns the exit code. `config` is the daemons' resolved configuration.
async fn run(
    command: Command,
    config: std::result::Result<remexec_bin::config::Config, Message>,
) -> Result<u8> {
    let config = || config.map_err(Error::InvalidArgument);
    match command {
        Command::Serve(_) => serve(config()?, Role::AllInOne).await.map(|()| 0),
        Command::Scheduler(_) => serve(config()?, Role::Scheduler).await.map(|()| 0),
        Command::Worker(_) => {
            let config = config()?;
            let isolation = remexec_bin::sandbox::worker_isolation(&config, supervisor()?)?;
            run_worker(&config, isolation, shutdown_signal()).await?;
            Ok(0)
        }
        Command::Exec(args) => remexec_bin::exec::run(args).await,
        Command::Cas(command) => print(remexec_bin::tools::cas(command).await),
        Command::Cluster(command) => print(remexec_bin::cluster_tools::cluster(command).await),
        Command::Ac(command) => match remexec_bin::tools::ac(command).await {
            Ok(Some(text)) => print(Ok(text)),
            Ok(None) => {
                eprintln!("remexec: not in the Action Cache");
                Ok(1)
            }
            Err(e) => Err(e),
        },
        Command::Show(command) => print(remexec_bin::tools::show(command).await),
        Command::Status(args) => print(remexec_bin::status::fetch(&args).await),
        Command::Completions { shell } => {
            Cli::completions(shell, &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            Cli::man(&mut std::io::stdout()).map_err(|e| Error::io("writing the man page", e))?;
            Ok(0)
        }
        Command::Tls(TlsCommand::DevCerts { dir }) => {
            remexec_bin::dev_certs::write(&dir)?;
            println!(
                "remexec: wrote {} into {} (demo certificates: never use them to guard a reachable server)",
                remexec_bin::dev_certs::FILES.join(", "),
                dir.display()
            );
            Ok(0)
        }
        Command::Bench(args) => bench(args).await,
    }
}

async fn bench(args: remexec_bin::bench::BenchArgs) -> Result<u8> {
    let report = remexec_bin::bench::run(&args, !args.json).await?;
    if args.json {
        let json = serde_json::to_string(&report)
            .map_err(|e| Error::internal("encoding the report", e))?;
        println!("{json}");
    } else {
        print!("{}", report.table());
    }
    Ok(u8::from(report.errors > 0))
}

async fn serve(config: remexec_bin::config::Config, role: Role) -> Result<()> {
    let security = Security::load(&config)?;
    let isolation: std::sync::Arc<dyn remexec_worker::Isolation> = match role {
        Role::AllInOne => remexec_bin::sandbox::worker_isolation(&config, supervisor()?)?,
        Role::Scheduler => std::sync::Arc::new(remexec_worker::ProcessIsolation::default()),
    };
    let server = BoundServer::bind_with(&config, role, security.clone(), isolation).await?;
    let _reloader = reload_on_sighup(config.clone(), security);
    let addr = server.local_addr()?;
    tracing::info!(data_dir = %config.data_dir.display(), ?role, "serving");
    if let Some(admin_addr) = server.admin_addr()? {
        println!("remexec: admin port on {admin_addr}");
    }
    if let Some(worker_addr) = server.worker_addr()? {
        println!("remexec: worker port on {worker_addr}");
    }
    println!("remexec: listening on {addr}");
    server.serve(shutdown_signal()).await
}
