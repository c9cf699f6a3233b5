//! The remexec daemons, as a library so that benchmarks and tests can start them in-process.
//!
//! This is the only remexec crate that reads configuration: config files, environment variables
//! and command-line flags. [`config::Config`] holds the embedded defaults (loopback port 8980, data under
//! `$XDG_CACHE_HOME/remexec` or `~/.cache/remexec`, a 10 GiB disk budget), which a TOML file and
//! then flags override.
//!
//! The nodes themselves are the libraries' (`remexec_scheduler::node::SchedulerNode`,
//! `remexec_worker::node::WorkerNode`); [`serve::BoundServer::bind`] maps a [`config::Config`]
//! onto them, and [`serve::run_worker`] does the same for `remexec worker`.
//!
//! ```no_run
//! use remexec_bin::config::Config;
//! use remexec_bin::serve::{BoundServer, Role};
//!
//! # async fn run() -> remexec_core::Result<()> {
//! let mut config = Config::default();
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! config.data_dir = std::env::temp_dir().join("remexec-doc");
//! let server = BoundServer::bind(&config, Role::AllInOne).await?;
//! println!("listening on {}", server.local_addr()?);
//! server.serve(remexec_bin::serve::shutdown_signal()).await
//! # }
//! ```

pub mod args;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod cluster_tools;
pub mod config;
pub mod dev_certs;
pub mod exec;
pub mod logging;
pub mod sandbox;
pub mod security;
pub mod serve;
pub mod server;
pub mod settings;
pub mod status;
pub mod tools;
