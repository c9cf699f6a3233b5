//! `remexec status`: a scheduler's status page, read from its admin port and summarised for a
//! terminal. The page itself is `remexec_scheduler::status`.

use remexec_core::{Error, Result};

/// The version line, as `--version` prints it.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("REMEXEC_GIT_COMMIT"),
    ")"
);

/// Flags of `remexec status`.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// The server's admin port (its --admin-listen), as host:port or an http:// URL.
    #[arg(long, default_value = "127.0.0.1:9090", env = "REMEXEC_ADMIN")]
    pub admin: String,
    /// Bearer token with the `admin` permission, if the server requires authentication.
    #[arg(long, env = "REMEXEC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the JSON document instead of the summary.
    #[arg(long, env = "REMEXEC_STATUS_JSON")]
    pub json: bool,
}

/// `remexec status`: reads `/status` from the admin port; returns what to print.
pub async fn fetch(args: &StatusArgs) -> Result<String> {
    use http_body_util::BodyExt;
    let base = if args.admin.contains("://") {
        args.admin.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", args.admin)
    };
    let url = format!("{base}/status");
    let mut request = http::Request::get(&url);
    if let Some(token) = &args.token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| Error::InvalidArgument(remexec_core::Message::caused_by(&url, e)))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
            .await
            .map_err(|_| Error::Unavailable(format!("{url}: no answer within 10 s").into()))?
            .map_err(|e| Error::Unavailable(remexec_core::Message::caused_by(&url, e)))?;
    let code = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::Unavailable(remexec_core::Message::caused_by(&url, e)))?
        .to_bytes();
    if !code.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(Error::Unavailable(
            format!("{url}: {code}: {}", text.trim()).into(),
        ));
    }
    if args.json {
        return Ok(format!("{}\n", String::from_utf8_lossy(&body)));
    }
    let status: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        Error::InvalidArgument(remexec_core::Message::caused_by(
            format!("{url}: not a status document"),
            e,
        ))
    })?;
    Ok(remexec_scheduler::status::summary(&status))
}
