//! `remexec cas locate` and `remexec cluster status`: where blobs are and how the cluster's
//! CAS stands, from a scheduler's (or a worker's) `Cluster` service.

use remexec_core::{Digest, DigestFunction, Result};
use remexec_proto::cluster::v1::cluster_client::ClusterClient;
use remexec_proto::cluster::v1::{LocateRequest, StatusRequest};
use serde_json::json;

use crate::args::ClientArgs;

/// `remexec cluster …`.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Print the members of the cluster's CAS, their state and blobs, and the copies still
    /// to make before every blob has R live replicas.
    Status {
        /// Print JSON.
        #[arg(long, env = "REMEXEC_JSON")]
        json: bool,
        /// The server.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `remexec cas locate`'s arguments.
#[derive(Debug, clap::Args)]
pub struct LocateArgs {
    /// The blobs (HASH/SIZE).
    #[arg(required = true)]
    pub digests: Vec<String>,
    /// Print JSON.
    #[arg(long, env = "REMEXEC_JSON")]
    pub json: bool,
    /// The server.
    #[command(flatten)]
    pub client: ClientArgs,
}

async fn cluster_client(client: &ClientArgs) -> Result<ClusterClient<tonic::transport::Channel>> {
    let channel = remexec_core::client::connect_with(&client.server, &client.tls.load()?).await?;
    Ok(ClusterClient::new(channel))
}

/// Runs `cas locate`: for each digest, the members holding it (text: `DIGEST HOLDER…`, one
/// line each; JSON: a list of `{digest, holders, placement, unreachable}`).
pub async fn locate(args: LocateArgs) -> Result<String> {
    let f = DigestFunction::Sha256;
    let digests = args
        .digests
        .iter()
        .map(|d| Digest::parse(f, d))
        .collect::<Result<Vec<_>>>()?;
    let request = LocateRequest {
        instance_name: args.client.instance.clone(),
        digests: digests.iter().map(Digest::to_proto).collect(),
        digest_function: f.to_proto(),
    };
    let answer = cluster_client(&args.client)
        .await?
        .locate(request)
        .await?
        .into_inner();
    let rows = digests.iter().zip(answer.locations);
    if args.json {
        let list: Vec<_> = rows
            .map(|(d, l)| {
                json!({"digest": d.to_string(), "holders": l.holders,
                                 "placement": l.placement, "unreachable": l.unreachable})
            })
            .collect();
        return Ok(format!("{}\n", serde_json::Value::from(list)));
    }
    Ok(rows
        .map(|(d, l)| format!("{d} {}\n", l.holders.join(" ")))
        .collect())
}

/// Runs a `cluster` command.
pub async fn cluster(command: ClusterCommand) -> Result<String> {
    let ClusterCommand::Status { json, client } = command;
    let status = cluster_client(&client)
        .await?
        .status(StatusRequest {})
        .await?
        .into_inner();
    if json {
        let members: Vec<_> = status
            .members
            .iter()
            .map(|m| {
                json!({"name": m.name, "url": m.url, "state": m.state, "blobs": m.blobs,
                       "bytes": m.bytes, "below_replicas": m.below_replicas, "error": m.error,
                       "room": m.room})
            })
            .collect();
        let all = json!({"replicas": status.replicas, "members": members,
                         "below_replicas": status.below_replicas, "schedulers": status.schedulers,
                         "scheduler": status.scheduler});
        return Ok(format!("{all}\n"));
    }
    let mut out = format!(
        "replicas: {}\ncopies to make: {}\n",
        status.replicas, status.below_replicas
    );
    if !status.schedulers.is_empty() {
        out.push_str(&format!(
            "schedulers: {} (this one: {})\n",
            status.schedulers.join(" "),
            status.scheduler
        ));
    }
    for m in &status.members {
        let error = match m.error.as_str() {
            "" => String::new(),
            e => format!("  ({e})"),
        };
        out.push_str(&format!(
            "{:<20} {:<5} {:>8} blobs {:>12} bytes {:>6} to copy  {}{error}\n",
            m.name, m.state, m.blobs, m.bytes, m.below_replicas, m.url
        ));
    }
    Ok(out)
}
