//! [`GrpcActionCache`]: an [`ActionCache`] that is a client of another server's REAPI
//! ActionCache service, the Action Cache half of a proxy in front of an upstream server.

use async_trait::async_trait;
use remexec_core::reapi::ActionResult;
use remexec_core::{ActionCache, Digest, Error, Result};
use remexec_proto::reapi::action_cache_client::ActionCacheClient;
use remexec_proto::reapi::{GetActionResultRequest, UpdateActionResultRequest};
use tonic::transport::Channel;

use crate::store::grpc::Upstream;

/// A remote Action Cache reached over gRPC: `get` is GetActionResult (`NOT_FOUND` is a miss),
/// `put` is UpdateActionResult.
///
/// Instance names are passed through unchanged, unless
/// [`with_upstream_instance`](Self::with_upstream_instance) maps them all onto one. What the
/// upstream server checks (results it refuses, entries whose outputs it lacks) is its own
/// business: a refused `put` is an `Err`, an entry it does not serve is a miss.
#[derive(Debug, Clone)]
pub struct GrpcActionCache {
    channel: Channel,
    upstream: Upstream,
}

impl GrpcActionCache {
    /// A cache that talks to the server behind `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            upstream: Upstream::default(),
        }
    }

    /// Sends every request under the instance name `name` upstream, whatever the local
    /// instance name; `None` (the default) passes local names through.
    pub fn with_upstream_instance(mut self, name: Option<&str>) -> Self {
        self.upstream.instance = name.map(str::to_string);
        self
    }

    /// Names the server in [`describe`](ActionCache::describe), e.g. its URL:
    /// `Grpc(grpc://...)`. Never pass anything secret.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.upstream.label = Some(label.into());
        self
    }

    fn client(&self) -> ActionCacheClient<Channel> {
        remexec_core::client::action_cache_client(self.channel.clone())
    }
}

#[async_trait]
impl ActionCache for GrpcActionCache {
    async fn get(&self, instance: &str, action: Digest) -> Result<Option<ActionResult>> {
        let req = GetActionResultRequest {
            instance_name: self.upstream.instance(instance),
            action_digest: Some(action.to_proto()),
            digest_function: action.function().to_proto(),
            ..Default::default()
        };
        match self.client().get_action_result(req).await {
            Ok(resp) => Ok(Some(resp.into_inner())),
            Err(status) => match Error::from(status) {
                Error::NotFound(_) => Ok(None),
                e => Err(e),
            },
        }
    }

    async fn put(&self, instance: &str, action: Digest, result: ActionResult) -> Result<()> {
        let req = UpdateActionResultRequest {
            instance_name: self.upstream.instance(instance),
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: action.function().to_proto(),
        };
        self.client().update_action_result(req).await?;
        Ok(())
    }

    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.upstream.describe("Grpc", f)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use remexec_core::DigestFunction;

    use super::*;
    use crate::{MemoryActionCache, MemoryStore};

    /// A server with a memory CAS and `ac`, and a channel to it.
    async fn serve(ac: Arc<dyn ActionCache>) -> (String, Channel) {
        crate::service::serve_on_loopback(Arc::new(MemoryStore::new(16 << 20)), ac).await
    }

    #[tokio::test]
    async fn conformance_against_a_real_server() {
        let (_, channel) = serve(Arc::new(MemoryActionCache::new(16 << 20))).await;
        remexec_core::testing::action_cache_conformance(Arc::new(GrpcActionCache::new(channel)))
            .await;
    }

    #[tokio::test]
    async fn every_local_instance_maps_onto_the_upstream_instance() {
        let back = Arc::new(MemoryActionCache::new(1 << 20));
        let (url, channel) = serve(back.clone()).await;
        let cache = GrpcActionCache::new(channel)
            .with_upstream_instance(Some("up"))
            .with_label(url.clone());
        assert_eq!(
            (&cache as &dyn ActionCache).to_string(),
            format!("Grpc({url}, instance \"up\")")
        );
        let action = DigestFunction::Sha256.digest_of(b"action");
        let result = remexec_core::testing::action_cache::sample_result(7, 1);
        cache.put("a/b", action, result.clone()).await.unwrap();
        assert_eq!(back.get("up", action).await.unwrap(), Some(result.clone()));
        assert_eq!(back.get("a/b", action).await.unwrap(), None);
        assert_eq!(cache.get("other", action).await.unwrap(), Some(result));
    }

    #[tokio::test]
    async fn refused_results_and_unreachable_servers_are_errors() {
        let (_, channel) = serve(Arc::new(MemoryActionCache::new(1 << 20))).await;
        let cache = GrpcActionCache::new(channel);
        let action = DigestFunction::Sha256.digest_of(b"action");
        let mut bad = remexec_core::testing::action_cache::sample_result(1, 1);
        bad.output_symlinks[0].path = "/absolute".into();
        let err = cache.put("", action, bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let nobody = remexec_core::client::connect_lazy(&format!("grpc://{addr}")).unwrap();
        let err = GrpcActionCache::new(nobody)
            .get("", action)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    }
}
