//! The REAPI Execution and google.longrunning Operations services over a [`Scheduler`].

use futures::StreamExt;
use futures::stream::BoxStream;
use remexec_core::apis::google::longrunning::operations_server::{Operations, OperationsServer};
use remexec_core::apis::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};
use remexec_core::apis::google::protobuf::Empty;
use remexec_core::reapi::execution_server::{Execution, ExecutionServer};
use remexec_core::reapi::{ExecuteRequest, WaitExecutionRequest};
use remexec_core::{Error, Result};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::Scheduler;

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

/// The REAPI Execution service.
#[derive(Debug, Clone)]
pub struct ExecutionService {
    scheduler: Scheduler,
}

impl ExecutionService {
    /// Serves `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        Self { scheduler }
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
        let rx = self.scheduler.execute(request.into_inner()).await;
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
}

impl OperationsService {
    /// Serves `scheduler`'s operations.
    pub fn new(scheduler: Scheduler) -> Self {
        Self { scheduler }
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
