//! Flags that several commands share: where a client connects and with which TLS, and
//! `NAME=VALUE` properties.

use std::path::PathBuf;

use clap::Args;

/// How a client tool or worker reaches a `grpcs://` server.
#[derive(Clone, Debug, Default, Args)]
pub struct ClientTlsArgs {
    /// PEM CA to verify a grpcs:// server with [default: the built-in roots].
    #[arg(long, value_name = "FILE", env = "REMEXEC_CLIENT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(long, value_name = "FILE", env = "REMEXEC_CLIENT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Its PEM private key.
    #[arg(long, value_name = "FILE", env = "REMEXEC_CLIENT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// Reads the files into a [`ClientTls`](remexec_core::client::ClientTls).
    pub fn load(&self) -> remexec_core::Result<remexec_core::client::ClientTls> {
        crate::security::client_tls(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )
    }
}

/// Where a client command connects.
#[derive(Clone, Debug, Args)]
pub struct ClientArgs {
    /// Server URL (grpc:// or grpcs://).
    #[arg(long, default_value = "grpc://127.0.0.1:8980", env = "REMEXEC_SERVER")]
    pub server: String,
    /// Instance name.
    #[arg(long, default_value = "", env = "REMEXEC_INSTANCE")]
    pub instance: String,
    /// TLS to a grpcs:// server.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// How long a transfer runs before a progress bar shows on a terminal.
    #[arg(
        long,
        default_value = "1s",
        value_parser = humantime::parse_duration,
        env = "REMEXEC_PROGRESS_AFTER",
        hide = true
    )]
    pub progress_after: std::time::Duration,
}

/// Parses `NAME=VALUE`.
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    if name.is_empty() {
        return Err(format!("{s:?} has an empty name"));
    }
    Ok((name.to_string(), value.to_string()))
}
