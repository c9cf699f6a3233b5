//! The ActionCache service.

use bytes::Bytes;
use remexec_core::reapi::ActionResult;
use remexec_core::{BlobStore, BlobStoreExt, Digest, Error, Result};
use remexec_proto::reapi::action_cache_server::ActionCache as ActionCacheRpc;
use remexec_proto::reapi::{GetActionResultRequest, UpdateActionResultRequest};
use tonic::{Request, Response, Status};

use super::{CacheServices, request_scope, respond};

/// The ActionCache service. Build it with [`CacheServices::action_cache`].
#[derive(Debug, Clone)]
pub struct ActionCacheService {
    services: CacheServices,
}

/// Inlines one blob if it fits the remaining budget and is in the CAS.
async fn inline(
    store: &dyn BlobStore,
    instance: &str,
    digest: Digest,
    budget: &mut u64,
) -> Result<Option<Vec<u8>>> {
    if digest.size() > *budget {
        return Ok(None);
    }
    let data = if digest.is_empty_blob() {
        Some(Bytes::new())
    } else {
        store.get_bytes(instance, digest, *budget).await?
    };
    Ok(data.map(|d| {
        *budget -= d.len() as u64;
        d.to_vec()
    }))
}

impl ActionCacheService {
    pub(crate) fn new(services: CacheServices) -> Self {
        Self { services }
    }

    async fn get(&self, req: GetActionResultRequest) -> Result<ActionResult> {
        let function = request_scope(&req.instance_name, req.digest_function)?;
        let action = Digest::from_field(function, req.action_digest.as_ref(), "action_digest")?;
        let instance = req.instance_name.as_str();
        let found = self.services.ac.get(instance, action).await?;
        self.services.metrics.action_cache_lookup(found.is_some());
        let mut result = found.ok_or_else(|| {
            Error::NotFound(format!("no cached result for action {action}").into())
        })?;
        let store = self.services.store.as_ref();
        let mut budget = self.services.limits.max_inline_size;
        let ActionResult {
            stdout_digest,
            stdout_raw,
            stderr_digest,
            stderr_raw,
            ..
        } = &mut result;
        for (wanted, digest, raw) in [
            (req.inline_stdout, stdout_digest, stdout_raw),
            (req.inline_stderr, stderr_digest, stderr_raw),
        ] {
            let Some(digest) = digest.as_ref().filter(|_| wanted) else {
                continue;
            };
            if let Some(bytes) = inline(
                store,
                instance,
                Digest::from_proto(function, digest)?,
                &mut budget,
            )
            .await?
            {
                *raw = bytes;
            }
        }
        for file in &mut result.output_files {
            if !req.inline_output_files.contains(&file.path) {
                continue;
            }
            let digest = Digest::from_field(function, file.digest.as_ref(), "output file digest")?;
            if let Some(raw) = inline(store, instance, digest, &mut budget).await? {
                file.contents = raw;
            }
        }
        Ok(result)
    }

    async fn update(&self, req: UpdateActionResultRequest) -> Result<ActionResult> {
        let instance = req.instance_name.clone();
        let (action, result) = super::result_to_store(req)?;
        self.services
            .ac
            .put(&instance, action, result.clone())
            .await?;
        Ok(result)
    }
}

#[tonic::async_trait]
impl ActionCacheRpc for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        respond(self.get(request.into_inner()).await)
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        respond(self.update(request.into_inner()).await)
    }
}
