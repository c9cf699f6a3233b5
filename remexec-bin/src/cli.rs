//! Command-line interface of the `remexec` binary.

use std::path::PathBuf;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};

use crate::config::{AcBackend, Config};

/// remexec: a Remote Execution API v2 cache and execution service for Bazel and other build tools.
#[derive(Debug, Parser)]
#[command(name = "remexec", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the all-in-one server: CAS, ByteStream, Action Cache and Capabilities services.
    ///
    /// With no flags and no config file it listens on 127.0.0.1:8980 and keeps data in
    /// $XDG_CACHE_HOME/remexec (or ~/.cache/remexec) with a 10 GiB disk budget. Point Bazel at
    /// it with --remote_cache=grpc://127.0.0.1:8980.
    Serve(ServeArgs),
}

/// Flags of `remexec serve`; each overrides the config file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (see docs/CONFIG.md); flags override it.
    #[arg(long, short = 'c', env = "REMEXEC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on, HOST:PORT (port 0 picks a free one) [default: 127.0.0.1:8980].
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Directory for the CAS and action cache [default: $XDG_CACHE_HOME/remexec or ~/.cache/remexec].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Most bytes of blobs kept on disk, e.g. 10GiB [default: 10 GiB].
    #[arg(long)]
    pub disk_budget: Option<ByteSize>,
    /// Where action results live [default: disk].
    #[arg(long, value_enum)]
    pub action_cache: Option<AcBackend>,
    /// Skip fsync before acknowledging writes (faster; safe against crashes of remexec, not of the machine).
    #[arg(long)]
    pub no_fsync: bool,
}

impl ServeArgs {
    /// Defaults, then the config file, then flags.
    pub fn resolve(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(budget) = self.disk_budget {
            config.cas.disk_budget = budget;
        }
        if let Some(backend) = self.action_cache {
            config.action_cache.backend = backend;
        }
        if self.no_fsync {
            config.cas.fsync = false;
        }
        Ok(config)
    }
}
