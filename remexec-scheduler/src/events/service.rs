//! The Build Event Service (`google.devtools.build.v1.PublishBuildEvent`) over [`BuildEvents`].
//!
//! Each `PublishBuildToolEventStream` call is read in batches: whatever messages have arrived
//! (at most [`MAX_BATCH`]) are checked and folded into their invocation, the invocation is
//! committed to the store, and only then are the batch's events acknowledged, in order. An
//! acknowledged event is therefore on disk. A client that reconnects resends what was not
//! acknowledged: events at or below the last sequence number applied are acknowledged again
//! without being applied twice, and a gap is refused with `FAILED_PRECONDITION`.

use std::sync::Arc;

use futures::FutureExt as _;
use prost::Message as _;
use remexec_core::{Error, Result};
use remexec_proto::build_event_stream as bep;
use remexec_proto::build_events::v1 as bes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::BuildEvents;
use super::invocation::Invocation;

/// Most events applied (and committed) together.
pub const MAX_BATCH: usize = 1000;
/// Most bytes of events applied together (beyond the first of a batch).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Largest request message accepted: bigger ones get `OUT_OF_RANGE`/`RESOURCE_EXHAUSTED` from
/// the transport, before they are buffered whole.
pub const MAX_EVENT_BYTES: usize = 4 << 20;
/// Most event streams (build id and component) one invocation may have.
const MAX_STREAMS_PER_INVOCATION: usize = 16;
/// Longest wait for a stream's next event before it is ended with `DEADLINE_EXCEEDED`.
const IDLE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Least time between two commits of an invocation, per MiB of its record: a client that sends
/// one event at a time does not make each one a rewrite of the whole record.
const COMMIT_SPACING_PER_MIB: std::time::Duration = std::time::Duration::from_millis(60);
/// The type Bazel's events travel as.
const BAZEL_EVENT: &str = "build_event_stream.BuildEvent";

/// The tonic service; see [`BuildEvents::service`].
#[derive(Clone, Debug)]
pub(super) struct Service(pub(super) BuildEvents);

/// `Ok` if `id` is a usable invocation or build id
/// ([`is_invocation_id`](crate::observe::is_invocation_id)); `INVALID_ARGUMENT` otherwise.
pub fn check_id(id: &str, what: &str) -> Result<()> {
    match crate::observe::is_invocation_id(id) {
        true => Ok(()),
        false => Err(Error::invalid(format!(
            "{what} must be 1 to 128 letters, digits or ._:- (got {:?})",
            super::invocation::cut(id, 64)
        ))),
    }
}

/// The stream an event belongs to, checked.
fn stream_of(event: &bes::OrderedBuildEvent) -> Result<bes::StreamId> {
    let stream = event
        .stream_id
        .clone()
        .ok_or_else(|| Error::invalid("an OrderedBuildEvent without a stream_id"))?;
    check_id(&stream.invocation_id, "stream_id.invocation_id")?;
    if !stream.build_id.is_empty() {
        check_id(&stream.build_id, "stream_id.build_id")?;
    }
    Ok(stream)
}

/// Folds one event into `inv`.
fn apply(inv: &mut Invocation, seq: i64, event: bes::BuildEvent) -> Result<()> {
    use bes::build_event::Event;
    match event.event {
        Some(Event::BazelEvent(any)) => {
            if !any.type_url.ends_with(BAZEL_EVENT) {
                return Err(Error::invalid(format!(
                    "event {seq}: a bazel_event of type {:?}, not {BAZEL_EVENT}",
                    super::invocation::cut(&any.type_url, 100)
                )));
            }
            let event = bep::BuildEvent::decode(any.value.as_slice()).map_err(|e| {
                Error::InvalidArgument(remexec_core::Message::caused_by(
                    format!("event {seq}: not a {BAZEL_EVENT}"),
                    e,
                ))
            })?;
            inv.apply(event);
        }
        Some(Event::ConsoleOutput(out)) => {
            if let Some(bes::build_event::console_output::Output::TextOutput(text)) = out.output {
                inv.add_output(&text);
            }
        }
        Some(_) => {}
        None => return Err(Error::invalid(format!("event {seq} has no event"))),
    }
    Ok(())
}

impl Service {
    /// Reads `stream` to its end, acknowledging through `acks`.
    async fn consume(
        &self,
        mut stream: Streaming<bes::PublishBuildToolEventStreamRequest>,
        acks: &mpsc::Sender<std::result::Result<bes::PublishBuildToolEventStreamResponse, Status>>,
    ) -> Result<()> {
        let mut attached: Option<(bes::StreamId, Arc<tokio::sync::Mutex<Invocation>>)> = None;
        let mut ended = false;
        let mut last_commit = tokio::time::Instant::now();
        let mut spacing = std::time::Duration::ZERO;
        while !ended {
            let first = match tokio::time::timeout(IDLE, stream.message()).await {
                Ok(first) => first?,
                Err(_) => {
                    return Err(Error::DeadlineExceeded(
                        format!("no build event for {} s", IDLE.as_secs()).into(),
                    ));
                }
            };
            let Some(first) = first else {
                break;
            };
            let mut bytes = first.encoded_len();
            let mut batch = vec![first];
            // What has arrived, and what arrives until the invocation's next commit is due.
            let due = last_commit + spacing;
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                let next = match tokio::time::timeout_at(due, stream.message()).await {
                    Ok(next) => Some(next),
                    Err(_) => stream.message().now_or_never(),
                };
                match next {
                    Some(Ok(Some(m))) => {
                        bytes += m.encoded_len();
                        batch.push(m);
                    }
                    Some(Ok(None)) => {
                        ended = true;
                        break;
                    }
                    Some(Err(status)) => return Err(status.into()),
                    None => break,
                }
            }
            let (answered, error, record) = self.apply_batch(&mut attached, batch).await;
            last_commit = tokio::time::Instant::now();
            spacing = COMMIT_SPACING_PER_MIB.mul_f64(record as f64 / f64::from(1 << 20));
            for ack in answered {
                if acks.send(Ok(ack)).await.is_err() {
                    return Ok(());
                }
            }
            if let Some(e) = error {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Applies `batch` up to its first bad event, commits what it applied, and returns the
    /// acknowledgements of what it applied (or had applied before), the error that stopped it,
    /// if any, and the size of the invocation's record.
    async fn apply_batch(
        &self,
        attached: &mut Option<(bes::StreamId, Arc<tokio::sync::Mutex<Invocation>>)>,
        batch: Vec<bes::PublishBuildToolEventStreamRequest>,
    ) -> (
        Vec<bes::PublishBuildToolEventStreamResponse>,
        Option<Error>,
        usize,
    ) {
        let mut answered = Vec::with_capacity(batch.len());
        let mut changed = false;
        let mut guard = None;
        let mut error = None;
        for request in batch {
            match self
                .apply_one(attached, &mut guard, request, &mut changed)
                .await
            {
                Ok(ack) => answered.push(ack),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let Some(inv) = guard else {
            return (answered, error, 0);
        };
        // Also when nothing changed but an earlier commit failed: what is acknowledged is stored.
        if !(changed || inv.dirty) {
            return (answered, error, inv.record_bytes);
        }
        match self.0.commit(inv).await {
            (inv, Ok(())) => (answered, error, inv.record_bytes),
            // Nothing of the batch is acknowledged: the client sends it again.
            (inv, Err(e)) => (Vec::new(), Some(e), inv.record_bytes),
        }
    }

    /// Applies one request to the invocation `guard` holds (attaching it first), setting
    /// `changed` if it applied an event; its acknowledgement.
    async fn apply_one(
        &self,
        attached: &mut Option<(bes::StreamId, Arc<tokio::sync::Mutex<Invocation>>)>,
        guard: &mut Option<tokio::sync::OwnedMutexGuard<Invocation>>,
        request: bes::PublishBuildToolEventStreamRequest,
        changed: &mut bool,
    ) -> Result<bes::PublishBuildToolEventStreamResponse> {
        {
            let ordered = request
                .ordered_build_event
                .ok_or_else(|| Error::invalid("a request without an ordered_build_event"))?;
            let stream_id = stream_of(&ordered)?;
            let entry = match attached {
                Some((id, entry)) if *id == stream_id => Arc::clone(entry),
                Some((id, _)) => {
                    return Err(Error::invalid(format!(
                        "event {} names stream {}/{}, but this call streams {}/{}",
                        ordered.sequence_number,
                        stream_id.build_id,
                        stream_id.invocation_id,
                        id.build_id,
                        id.invocation_id
                    )));
                }
                None => {
                    let entry = self
                        .0
                        .attach(&stream_id.invocation_id, &stream_id.build_id)
                        .await?;
                    *attached = Some((stream_id.clone(), Arc::clone(&entry)));
                    entry
                }
            };
            if guard.is_none() {
                *guard = Some(entry.lock_owned().await);
            }
            let Some(inv) = guard.as_mut() else {
                return Err(Error::Internal("no invocation attached".into()));
            };
            let key = format!("{}/{}", stream_id.build_id, stream_id.component);
            let last = inv.streams.get(&key).copied().unwrap_or(0);
            let seq = ordered.sequence_number;
            if seq > last {
                if seq != last + 1 {
                    return Err(Error::FailedPrecondition(
                        format!(
                            "event {seq} of invocation {}: expected event {}",
                            stream_id.invocation_id,
                            last + 1
                        )
                        .into(),
                    ));
                }
                let event = ordered
                    .event
                    .ok_or_else(|| Error::invalid(format!("event {seq} has no event")))?;
                if !inv.streams.contains_key(&key)
                    && inv.streams.len() >= MAX_STREAMS_PER_INVOCATION
                {
                    return Err(Error::FailedPrecondition(
                        format!(
                            "invocation {} already has {MAX_STREAMS_PER_INVOCATION} event streams",
                            stream_id.invocation_id
                        )
                        .into(),
                    ));
                }
                apply(inv, seq, event)?;
                if let Some(m) = self.0.metrics() {
                    m.build_events(1);
                }
                inv.streams.insert(key, seq);
                inv.dirty = true;
                *changed = true;
            }
            Ok(bes::PublishBuildToolEventStreamResponse {
                stream_id: Some(stream_id),
                sequence_number: seq,
            })
        }
    }
}

#[tonic::async_trait]
impl bes::publish_build_event_server::PublishBuildEvent for Service {
    async fn publish_lifecycle_event(
        &self,
        request: Request<bes::PublishLifecycleEventRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        // Lifecycle events (enqueued, started, finished) say nothing the tool's own stream
        // does not; they are checked and acknowledged.
        // Those of the build as a whole (enqueued, finished) name no invocation.
        let event = request
            .into_inner()
            .build_event
            .ok_or_else(|| Error::invalid("a lifecycle event without a build_event"))?;
        let stream = event
            .stream_id
            .ok_or_else(|| Error::invalid("a lifecycle event without a stream_id"))?;
        for (id, what) in [
            (&stream.invocation_id, "stream_id.invocation_id"),
            (&stream.build_id, "stream_id.build_id"),
        ] {
            if !id.is_empty() {
                check_id(id, what)?;
            }
        }
        Ok(Response::new(()))
    }

    type PublishBuildToolEventStreamStream =
        ReceiverStream<std::result::Result<bes::PublishBuildToolEventStreamResponse, Status>>;

    async fn publish_build_tool_event_stream(
        &self,
        request: Request<Streaming<bes::PublishBuildToolEventStreamRequest>>,
    ) -> std::result::Result<Response<Self::PublishBuildToolEventStreamStream>, Status> {
        let permit = self.0.open_stream()?;
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        let service = self.clone();
        let stream = request.into_inner();
        tokio::spawn(async move {
            if let Err(e) = service.consume(stream, &tx).await {
                tracing::debug!(error = %e, "a build event stream ended with an error");
                let _ = tx.send(Err(e.into())).await;
            }
            drop(permit);
            service.0.detach();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("0b3e2a1c-94d4-4a55-9b0e-5b2a56c9d7e1", "id").is_ok());
        for bad in ["", "a/b", "<script>", "../x", &"a".repeat(129), "é"] {
            assert!(check_id(bad, "id").is_err(), "{bad}");
        }
    }
}
