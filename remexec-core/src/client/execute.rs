//! Execute and follow an operation to its end: the `Execute` stream, each stage reported to the
//! caller, the final `ExecuteResponse` decoded. If the stream breaks before the operation is
//! done, the operation is followed again with `WaitExecution` under its name, a bounded number
//! of times.

use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tonic::transport::Channel;

use super::endpoint::execution_client;
use crate::apis::google::longrunning::{Operation, operation};
use crate::reapi::{
    ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse, WaitExecutionRequest,
};
use crate::{Error, Result};

/// How [`execute`] follows an operation whose stream breaks.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FollowOptions {
    /// `WaitExecution` attempts in a row, without an update in between, before giving up.
    pub max_reconnects: u32,
    /// The wait before the first reconnection; it doubles with each attempt in a row.
    pub backoff: Duration,
    /// Sent with `Execute` and `WaitExecution` (the `requestmetadata-bin` header), so that the
    /// server's spans, metrics and status page can tell the caller, its invocation and action.
    pub metadata: Option<crate::reapi::RequestMetadata>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            max_reconnects: 5,
            backoff: Duration::from_millis(100),
            metadata: None,
        }
    }
}

/// Whether a broken stream is worth following again: transport failures and servers going
/// away, not refusals.
fn retriable(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Aborted
    )
}

/// The operation's `ExecuteResponse` if it is done: `Err` for a done operation carrying an
/// error (or nothing) instead of a response.
/// The `ExecuteResponse` of a done operation, `None` while it runs; the error of an operation
/// that failed.
pub fn operation_response(op: &Operation) -> Result<Option<ExecuteResponse>> {
    match &op.result {
        Some(operation::Result::Response(any)) => ExecuteResponse::decode(&any.value[..])
            .map(Some)
            .map_err(|e| {
                Error::Internal(format!("bad ExecuteResponse in {}: {e}", op.name).into())
            }),
        Some(operation::Result::Error(status)) => {
            Err(super::status_result(Some(status)).err().unwrap_or_else(|| {
                Error::Internal(format!("{} failed with an OK status", op.name).into())
            }))
        }
        None if op.done => Err(Error::Internal(
            format!("{} is done without a response", op.name).into(),
        )),
        None => Ok(None),
    }
}

/// `message` as a request carrying `options.metadata`, if any.
fn with_metadata<M>(message: M, options: &FollowOptions) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    if let Some(metadata) = &options.metadata {
        request.metadata_mut().insert_bin(
            crate::resource::REQUEST_METADATA_HEADER,
            tonic::metadata::MetadataValue::from_bytes(&metadata.encode_to_vec()),
        );
    }
    request
}

/// Sends `request` and follows the operation until it is done; returns its `ExecuteResponse`.
///
/// `on_update` sees every operation message whose metadata decodes (its name and
/// `ExecuteOperationMetadata`), in order. A failed `Execute` call is its error. If the stream
/// fails with a transport-like code (`UNAVAILABLE`, `UNKNOWN`, `INTERNAL`, `ABORTED`) or ends
/// before the operation is done, `WaitExecution` follows the operation by name, up to
/// `options.max_reconnects` times in a row; the action is never submitted twice.
pub async fn execute(
    channel: Channel,
    request: ExecuteRequest,
    options: &FollowOptions,
    mut on_update: impl FnMut(&str, &ExecuteOperationMetadata),
) -> Result<ExecuteResponse> {
    let mut client = execution_client(channel);
    let mut stream = client
        .execute(with_metadata(request, options))
        .await?
        .into_inner();
    let mut name: Option<String> = None;
    let mut attempts = 0u32;
    loop {
        let broken = match stream.next().await {
            Some(Ok(op)) => {
                attempts = 0;
                if let Some(meta) = op
                    .metadata
                    .as_ref()
                    .and_then(|m| ExecuteOperationMetadata::decode(&m.value[..]).ok())
                {
                    on_update(&op.name, &meta);
                }
                if let Some(response) = operation_response(&op)? {
                    return Ok(response);
                }
                name = Some(op.name);
                continue;
            }
            Some(Err(status)) if retriable(status.code()) => Error::from(status),
            Some(Err(status)) => return Err(status.into()),
            None => Error::Unavailable(
                "the operation stream ended before the operation was done".into(),
            ),
        };
        // Follow the operation again, by name, until a stream opens or the attempts run out.
        let mut last = broken;
        loop {
            let Some(name) = name.clone() else {
                return Err(last);
            };
            if attempts >= options.max_reconnects {
                return Err(last);
            }
            tokio::time::sleep(options.backoff.saturating_mul(1 << attempts.min(16))).await;
            attempts += 1;
            match client
                .wait_execution(with_metadata(WaitExecutionRequest { name }, options))
                .await
            {
                Ok(response) => {
                    stream = response.into_inner();
                    break;
                }
                Err(status) if retriable(status.code()) => last = status.into(),
                Err(status) => return Err(status.into()),
            }
        }
    }
}
