//! A roster held in etcd: members register under a lease, and every instance reads the same
//! list, so all of them agree on it whatever they can reach.
//!
//! A seed `etcd://host:port/prefix` names an etcd cluster's client endpoint (plain HTTP, its
//! JSON gateway `/v3/…`) and a key prefix. Each member puts the key `{prefix}/{name}` with its
//! URL as the value, under a lease of [`LEASE_TTL`] that it renews every quarter of it (and
//! checks that the key is still its own: a second member under the same name is logged and
//! the key taken back); a member that stops renewing (a crash, a cut from etcd) leaves the
//! roster when its lease expires, and one that stops cleanly revokes its lease and leaves at
//! once. Instances read the prefix every membership round; a read that fails keeps the last
//! roster, and until a first read succeeds the roster is empty.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::Member;
use crate::{Error, Result};

/// How long a member stays on the roster after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How long one call to etcd may take: a fifth of the lease, so that a renewal that fails is
/// retried before the lease ends.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// An etcd client endpoint and the key prefix of one roster.
#[derive(Clone, Debug)]
pub struct EtcdRoster {
    client: reqwest::Client,
    endpoint: String,
    /// The prefix, ending in `/`.
    prefix: String,
}

impl EtcdRoster {
    /// The roster `seed` names if it is an `etcd://host:port/prefix` URL, `None` for another
    /// scheme; `InvalidArgument` for an etcd URL without a host, a port or a prefix.
    pub fn from_seed(seed: &str) -> Result<Option<Self>> {
        let Some(rest) = seed.strip_prefix("etcd://") else {
            return Ok(None);
        };
        let bad = || Error::invalid(format!("seed {seed:?}: expected etcd://host:port/prefix"));
        let (authority, prefix) = rest.split_once('/').ok_or_else(bad)?;
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let prefix = prefix.trim_matches('/');
        if host.is_empty() || port.parse::<u16>().is_err() || prefix.is_empty() {
            return Err(bad());
        }
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| Error::Internal(format!("an HTTP client for etcd: {e}").into()))?;
        Ok(Some(Self {
            client,
            endpoint: format!("http://{authority}"),
            prefix: format!("/{prefix}/"),
        }))
    }

    /// Calls `/v3/{path}` with `body`; its JSON answer.
    async fn call(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}/v3/{path}", self.endpoint);
        let unavailable = |e: reqwest::Error| {
            Error::Unavailable(format!("etcd at {}: {path}: {e}", self.endpoint).into())
        };
        let answer = self.client.post(&url).json(&body).send().await;
        let answer = answer
            .and_then(|a| a.error_for_status())
            .map_err(unavailable)?;
        answer.json().await.map_err(unavailable)
    }

    /// The members registered now, sorted by name.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let end = prefix_end(&self.prefix);
        let body = json!({"key": B64.encode(&self.prefix), "range_end": B64.encode(end)});
        let answer = self.call("kv/range", body).await?;
        let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
        let mut members: Vec<Member> = kvs
            .iter()
            .filter_map(|kv| {
                let key = decode(&kv["key"])?;
                let name = key.strip_prefix(&self.prefix)?.to_string();
                let url = decode(&kv["value"])?;
                (!name.is_empty()).then_some(Member { name, url })
            })
            .collect();
        members.sort();
        Ok(members)
    }

    /// The URL and lease of the key `member` is registered under, if it is there.
    async fn holder(&self, member: &Member) -> Result<Option<(String, String)>> {
        let key = format!("{}{}", self.prefix, member.name);
        let answer = self
            .call("kv/range", json!({"key": B64.encode(key)}))
            .await?;
        let kv = &answer["kvs"][0];
        let lease = kv["lease"].as_str().unwrap_or("0").to_string();
        Ok(decode(&kv["value"]).map(|url| (url, lease)))
    }

    /// Puts `member` under `lease`.
    async fn put(&self, member: &Member, lease: &str) -> Result<()> {
        let key = format!("{}{}", self.prefix, member.name);
        let body =
            json!({"key": B64.encode(key), "value": B64.encode(&member.url), "lease": lease});
        self.call("kv/put", body).await.map(|_| ())
    }

    /// Puts `member` under a new lease of `ttl`; the lease. A lease whose put fails is revoked.
    async fn register(&self, member: &Member, ttl: Duration) -> Result<String> {
        let grant = self
            .call("lease/grant", json!({"TTL": ttl.as_secs()}))
            .await?;
        let lease = grant["ID"]
            .as_str()
            .ok_or_else(|| Error::Unavailable("etcd granted no lease".into()))?
            .to_string();
        if let Err(e) = self.put(member, &lease).await {
            let _ = self.call("lease/revoke", json!({"ID": lease})).await;
            return Err(e);
        }
        Ok(lease)
    }

    /// Renews `lease`: `Ok(false)` if it ended. Then, if the key is no longer `member`'s under
    /// it (another member registered under the same name), says so and puts it back.
    async fn renew(&self, member: &Member, lease: &str) -> Result<bool> {
        let answer = self.call("lease/keepalive", json!({"ID": lease})).await?;
        let ttl = answer["result"]["TTL"].as_str().unwrap_or("0");
        if ttl.parse::<i64>().unwrap_or(0) <= 0 {
            return Ok(false);
        }
        match self.holder(member).await? {
            Some((url, held)) if url == member.url && held == lease => {}
            other => {
                if let Some((url, _)) = other.filter(|(url, _)| *url != member.url) {
                    tracing::error!(name = %member.name, ours = %member.url, theirs = %url,
                        "another member registered in etcd under this name: names must be unique");
                }
                self.put(member, lease).await?;
            }
        }
        Ok(true)
    }

    /// Keeps `member` registered under leases of `ttl` until `stop` resolves, then revokes the
    /// lease so that it leaves the roster at once. A renewal that fails is retried until the
    /// lease ends; then the member registers again.
    pub async fn keep_registered(
        self,
        member: Member,
        ttl: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut lease: Option<String> = None;
        let every = ttl / 4;
        tokio::pin!(stop);
        loop {
            let started = tokio::time::Instant::now();
            if let Some(id) = &lease {
                match self.renew(&member, id).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(name = %member.name, "the etcd lease ended: registering again");
                        lease = None;
                    }
                    Err(e) => {
                        tracing::warn!(name = %member.name, error = %e, "renewing the etcd lease failed")
                    }
                }
            }
            if lease.is_none() {
                match self.register(&member, ttl).await {
                    Ok(id) => {
                        tracing::info!(name = %member.name, url = %member.url, "registered in etcd");
                        lease = Some(id);
                    }
                    Err(e) => {
                        tracing::warn!(name = %member.name, error = %e, "registering in etcd failed")
                    }
                }
            }
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep_until(started + every) => {}
            }
        }
        if let Some(id) = lease
            && let Err(e) = self.call("lease/revoke", json!({"ID": id})).await
        {
            tracing::warn!(name = %member.name, error = %e, "revoking the etcd lease failed");
        }
    }

    /// The lease `member`'s key is under, if it is registered (for tests).
    #[cfg(test)]
    pub(super) async fn lease_of(&self, member: &Member) -> Option<String> {
        self.holder(member)
            .await
            .ok()
            .flatten()
            .map(|(_, lease)| lease)
    }
}

/// The first key after every key that starts with `prefix`: its last byte plus one.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A base64 JSON string as UTF-8 text.
fn decode(value: &Value) -> Option<String> {
    String::from_utf8(B64.decode(value.as_str()?).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_name_an_endpoint_and_a_prefix() {
        let roster = EtcdRoster::from_seed("etcd://127.0.0.1:2379/remexec/storage/")
            .unwrap()
            .unwrap();
        assert_eq!(roster.endpoint, "http://127.0.0.1:2379");
        assert_eq!(roster.prefix, "/remexec/storage/");
        assert_eq!(prefix_end(&roster.prefix), b"/remexec/storage0");
        assert!(EtcdRoster::from_seed("grpc://h:1").unwrap().is_none());
        for bad in [
            "etcd://h:1",
            "etcd://h:1/",
            "etcd://h/p",
            "etcd://:1/p",
            "etcd://h:x/p",
        ] {
            assert!(EtcdRoster::from_seed(bad).is_err(), "{bad}");
        }
    }
}
