//! [`PeerService`]: remexec's `remexec.cluster.v1.Peer` service, a scheduler's own Action
//! Cache as the other schedulers of its cluster see it (through
//! [`PeerActionCache`](crate::ac::sharded::PeerActionCache)). Requests are checked as the
//! ActionCache service checks them; nothing is routed on.

use std::sync::Arc;

use remexec_core::reapi::ActionResult;
use remexec_core::{ActionCache, Error, Result};
use remexec_proto::cluster::v1::peer_server::{Peer, PeerServer};
use remexec_proto::reapi::{GetActionResultRequest, UpdateActionResultRequest};
use tonic::{Request, Response, Status};

use super::{action_to_get, respond, result_to_store};

/// The `Peer` service over a scheduler's own cache.
#[derive(Debug, Clone)]
pub struct PeerService {
    local: Arc<dyn ActionCache>,
}

impl PeerService {
    /// Answers from `local`, which must be the scheduler's own cache, not the sharded one.
    pub fn new(local: Arc<dyn ActionCache>) -> Self {
        Self { local }
    }

    /// The tonic service.
    pub fn into_service(self) -> PeerServer<Self> {
        PeerServer::new(self)
            .max_decoding_message_size(remexec_core::client::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(remexec_core::client::MAX_MESSAGE_SIZE)
    }

    async fn get(&self, req: GetActionResultRequest) -> Result<ActionResult> {
        let action = action_to_get(&req)?;
        self.local
            .get(&req.instance_name, action)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no cached result for action {action}").into()))
    }

    async fn update(&self, req: UpdateActionResultRequest) -> Result<ActionResult> {
        let instance = req.instance_name.clone();
        let (action, result) = result_to_store(req)?;
        self.local.put(&instance, action, result.clone()).await?;
        Ok(result)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
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
