//! The REAPI Execution and google.longrunning Operations services over a [`Scheduler`],
//! [`ExecutionServices`] to mount both, and the [`execution_capabilities`] a server advertises.

use futures::StreamExt;
use futures::stream::BoxStream;
use remexec_core::apis::google::longrunning::operations_server::{Operations, OperationsServer};
use remexec_core::apis::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};
use remexec_core::apis::google::protobuf::Empty;
use remexec_core::reapi::execution_server::{Execution, ExecutionServer};
use remexec_core::reapi::priority_capabilities::PriorityRange;
use remexec_core::reapi::{
    ExecuteRequest, ExecutionCapabilities, PriorityCapabilities, WaitExecutionRequest,
    digest_function,
};
use remexec_core::{DigestFunction, Error, Result};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use remexec_core::Digest;
use remexec_core::apis::google::longrunning::operations_client::OperationsClient;
use tonic::transport::Channel;

use crate::Scheduler;
use crate::routing::{Routing, forwarded, was_routed};

/// A stream of an operation's states, ending with the one where `done` is set.
fn follow(rx: watch::Receiver<Operation>) -> BoxStream<'static, Result<Operation, Status>> {
    futures::stream::unfold((rx, true, false), |(mut rx, first, finished)| async move {
        if finished {
            return None;
        }
        if !first && rx.changed().await.is_err() {
            return Some((
                Err(Error::Unavailable("the scheduler dropped this operation".into()).into()),
                (rx, false, true),
            ));
        }
        let op = rx.borrow_and_update().clone();
        let done = op.done;
        Some((Ok(op), (rx, false, done)))
    })
    .boxed()
}

fn respond<T>(result: Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e: Error| e.into())
}

/// What Capabilities says about execution when a [`Scheduler`] serves Execute: enabled, SHA-256
/// and BLAKE3, and the whole `i32` priority range (lower runs sooner). Pass it to the cache
/// services' Capabilities (`CacheServices::with_execution` in remexec-cas), or Bazel refuses
/// `--remote_executor`.
pub fn execution_capabilities() -> ExecutionCapabilities {
    ExecutionCapabilities {
        digest_function: digest_function::Value::Sha256 as i32,
        exec_enabled: true,
        execution_priority_capabilities: Some(PriorityCapabilities {
            priorities: vec![PriorityRange {
                min_priority: i32::MIN,
                max_priority: i32::MAX,
            }],
        }),
        digest_functions: DigestFunction::ALL.iter().map(|f| f.to_proto()).collect(),
        ..Default::default()
    }
}

/// The Execution and Operations services of one [`Scheduler`], to mount on a tonic server, the
/// way `CacheServices` mounts the cache services.
///
/// ```no_run
/// # async fn doc(scheduler: remexec_scheduler::Scheduler) -> Result<(), tonic::transport::Error> {
/// use remexec_scheduler::ExecutionServices;
///
/// let routes = ExecutionServices::new(scheduler).into_routes();
/// let addr = "127.0.0.1:8980".parse().unwrap();
/// tonic::transport::Server::builder().add_routes(routes).serve(addr).await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ExecutionServices {
    scheduler: Scheduler,
    routing: Option<Arc<Routing>>,
}

impl ExecutionServices {
    /// Both services over `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        Self {
            scheduler,
            routing: None,
        }
    }

    /// Forwards the actions and operations other schedulers of the cluster own to them
    /// ([`Routing`]); the scheduler's operation names must carry [`Routing::id`].
    pub fn with_routing(mut self, routing: Arc<Routing>) -> Self {
        self.routing = Some(routing);
        self
    }

    /// What Capabilities should say about execution: [`execution_capabilities`].
    pub fn capabilities(&self) -> ExecutionCapabilities {
        execution_capabilities()
    }

    /// The Execution service.
    pub fn execution(&self) -> ExecutionServer<ExecutionService> {
        let mut service = ExecutionService::new(self.scheduler.clone());
        service.routing.clone_from(&self.routing);
        service.into_server()
    }

    /// The Operations service.
    pub fn operations(&self) -> OperationsServer<OperationsService> {
        let mut service = OperationsService::new(self.scheduler.clone());
        service.routing.clone_from(&self.routing);
        service.into_server()
    }

    /// Adds both services to `routes`, for example the cache services' routes.
    pub fn add_to(self, routes: tonic::service::Routes) -> tonic::service::Routes {
        routes
            .add_service(self.execution())
            .add_service(self.operations())
    }

    /// Both services as tonic routes, ready for `Server::builder().add_routes(...)`.
    pub fn into_routes(self) -> tonic::service::Routes {
        self.add_to(tonic::service::Routes::default())
    }
}

/// The REAPI Execution service.
#[derive(Debug, Clone)]
pub struct ExecutionService {
    scheduler: Scheduler,
    routing: Option<Arc<Routing>>,
}

impl ExecutionService {
    /// Serves `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        Self {
            scheduler,
            routing: None,
        }
    }

    /// The scheduler that owns the action `request` names, if another does.
    fn owner(&self, request: &Request<ExecuteRequest>) -> Option<(String, Channel)> {
        let routing = self.routing.as_ref().filter(|_| !was_routed(request))?;
        let req = request.get_ref();
        let function = DigestFunction::from_proto(req.digest_function).ok()?;
        let action =
            Digest::from_field(function, req.action_digest.as_ref(), "action_digest").ok()?;
        routing.owner(&action)
    }

    /// As a tonic service, ready to mount.
    pub fn into_server(self) -> ExecutionServer<Self> {
        ExecutionServer::new(self)
    }
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = BoxStream<'static, Result<Operation, Status>>;
    type WaitExecutionStream = BoxStream<'static, Result<Operation, Status>>;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let request = match self.owner(&request) {
            Some((owner, channel)) => {
                let copy = Request::from_parts(
                    request.metadata().clone(),
                    Default::default(),
                    request.get_ref().clone(),
                );
                let forwarded = forwarded(request);
                match remexec_core::client::execution_client(channel)
                    .execute(forwarded)
                    .await
                {
                    Ok(stream) => return Ok(Response::new(stream.into_inner().boxed())),
                    // The owner is gone and the membership does not know yet: run it here.
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        tracing::warn!(%owner, error = %status.message(), "the action's scheduler is unreachable; running it here");
                        copy
                    }
                    Err(status) => return Err(status),
                }
            }
            None => request,
        };
        // The ObserveLayer parsed the client's RequestMetadata already, if it is in front.
        let metadata = request
            .extensions()
            .get::<remexec_core::reapi::RequestMetadata>()
            .cloned()
            .or_else(|| {
                remexec_core::observe::request_metadata(&request.metadata().clone().into_headers())
            })
            .unwrap_or_default();
        let caller = request
            .extensions()
            .get::<remexec_core::auth::Principal>()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let rx = self
            .scheduler
            .execute_as(request.into_inner(), metadata, &caller)
            .await;
        respond(rx.map(|rx| {
            let first = crate::operations::cache_check_stage(&rx.borrow());
            futures::stream::once(async move { Ok(first) })
                .chain(follow(rx))
                .boxed()
        }))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        if let Some((_, channel)) = operation_owner(self.routing.as_deref(), &request, |r| &r.name)
        {
            let stream = remexec_core::client::execution_client(channel)
                .wait_execution(forwarded(request))
                .await?;
            return Ok(Response::new(stream.into_inner().boxed()));
        }
        respond(
            self.scheduler
                .subscribe(&request.into_inner().name)
                .await
                .map(follow),
        )
    }
}

/// The google.longrunning Operations service for execution operations.
#[derive(Debug, Clone)]
pub struct OperationsService {
    scheduler: Scheduler,
    routing: Option<Arc<Routing>>,
}

/// The live scheduler that owns the operation `request` names, if another does and the call
/// was not forwarded already.
fn operation_owner<T>(
    routing: Option<&Routing>,
    request: &Request<T>,
    name: impl Fn(&T) -> &String,
) -> Option<(String, Channel)> {
    let routing = routing.filter(|_| !was_routed(request))?;
    routing.operation_owner(name(request.get_ref()))
}

impl OperationsService {
    /// Serves `scheduler`'s operations.
    pub fn new(scheduler: Scheduler) -> Self {
        Self {
            scheduler,
            routing: None,
        }
    }

    /// As a tonic service, ready to mount.
    pub fn into_server(self) -> OperationsServer<Self> {
        OperationsServer::new(self)
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        _: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        Err(Error::Unimplemented("ListOperations is not supported".into()).into())
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        if let Some((_, channel)) = operation_owner(self.routing.as_deref(), &request, |r| &r.name)
        {
            return OperationsClient::new(channel)
                .max_decoding_message_size(remexec_core::client::MAX_MESSAGE_SIZE)
                .get_operation(forwarded(request))
                .await;
        }
        respond(
            self.scheduler
                .subscribe(&request.into_inner().name)
                .await
                .map(|rx| rx.borrow().clone()),
        )
    }

    async fn delete_operation(
        &self,
        _: Request<DeleteOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Error::Unimplemented(
            "DeleteOperation is not supported; operations expire on their own".into(),
        )
        .into())
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        if let Some((_, channel)) = operation_owner(self.routing.as_deref(), &request, |r| &r.name)
        {
            return OperationsClient::new(channel)
                .max_decoding_message_size(remexec_core::client::MAX_MESSAGE_SIZE)
                .cancel_operation(forwarded(request))
                .await;
        }
        respond(
            self.scheduler
                .cancel(&request.into_inner().name)
                .map(|()| Empty {}),
        )
    }

    async fn wait_operation(
        &self,
        _: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        Err(Error::Unimplemented("WaitOperation is not supported; use WaitExecution".into()).into())
    }
}
