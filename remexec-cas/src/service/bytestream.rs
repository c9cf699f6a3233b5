//! The ByteStream service: streaming reads and resumable writes of blobs of any size.
//!
//! A write feeds the store through a bounded channel as the chunks arrive, so nothing is
//! buffered whole. If the client's stream breaks before `finish_write`, the upload is parked for
//! [`Limits::upload_resume_window`](super::Limits): a new `Write` with the same resource name
//! and a `write_offset` at or below the committed size continues it (bytes already committed are
//! skipped), and `QueryWriteStatus` reports progress. An upload of a blob the store already
//! holds completes at once.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use remexec_core::{
    BlobStoreExt, Compressor, Error, ReadRange, ReadResource, Result, WriteResource,
};
use remexec_proto::bytestream::byte_stream_server::ByteStream;
use remexec_proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::compression::{compress_stream, decompress_stream};
use super::{CacheServices, respond};

/// Chunks buffered between the network and the store for one upload.
const UPLOAD_QUEUE: usize = 8;

/// An upload in progress whose client stream is not attached.
#[derive(Debug)]
struct Upload {
    tx: mpsc::Sender<Result<Bytes>>,
    done: oneshot::Receiver<Result<()>>,
    committed: u64,
    generation: u64,
}

/// The ByteStream service. Build it with [`CacheServices::byte_stream`].
#[derive(Debug, Clone)]
pub struct ByteStreamService {
    services: CacheServices,
    parked: Arc<Mutex<HashMap<String, Upload>>>,
    generations: Arc<std::sync::atomic::AtomicU64>,
}

impl ByteStreamService {
    pub(crate) fn new(services: CacheServices) -> Self {
        Self {
            services,
            parked: Arc::default(),
            generations: Arc::default(),
        }
    }

    async fn read(
        &self,
        req: ReadRequest,
    ) -> Result<BoxStream<'static, Result<ReadResponse, Status>>> {
        let resource = ReadResource::parse(&req.resource_name)?;
        let digest = resource.blob.digest;
        if req.read_offset < 0 {
            return Err(Error::OutOfRange(
                format!("read_offset {} is negative", req.read_offset).into(),
            ));
        }
        if req.read_limit < 0 {
            return Err(Error::invalid(format!(
                "read_limit {} is negative",
                req.read_limit
            )));
        }
        if resource.blob.compressor != Compressor::Identity && req.read_limit != 0 {
            return Err(Error::invalid(
                "read_limit must be 0 when reading compressed-blobs",
            ));
        }
        let range = ReadRange {
            offset: req.read_offset as u64,
            limit: (req.read_limit > 0).then_some(req.read_limit as u64),
        };
        let data = if digest.is_empty_blob() {
            range.resolve(0)?;
            futures::stream::empty().boxed()
        } else {
            self.services
                .store
                .get(&resource.instance, digest, range)
                .await?
                .ok_or_else(|| Error::NotFound(format!("blob {digest} is not in the CAS").into()))?
        };
        let data = compress_stream(resource.blob.compressor, data);
        Ok(data
            .filter(|chunk| futures::future::ready(!matches!(chunk, Ok(c) if c.is_empty())))
            .map(|chunk| {
                chunk
                    .map(|data| ReadResponse { data })
                    .map_err(Status::from)
            })
            .boxed())
    }

    /// Starts the store-side half of an upload: a task that puts whatever the channel yields.
    fn start_upload(&self, resource: &WriteResource) -> Upload {
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(UPLOAD_QUEUE);
        let (done_tx, done) = oneshot::channel();
        let store = Arc::clone(&self.services.store);
        let instance = resource.instance.clone();
        let digest = resource.blob.digest;
        let data = decompress_stream(
            resource.blob.compressor,
            tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
        );
        tokio::spawn(async move {
            let _ = done_tx.send(store.put(&instance, digest, data).await);
        });
        Upload {
            tx,
            done,
            committed: 0,
            generation: 0,
        }
    }

    /// Parks an interrupted upload and forgets it after the resume window.
    fn park(&self, name: String, mut upload: Upload) {
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        upload.generation = generation;
        {
            let mut parked = self.parked.lock();
            if parked.len() >= self.services.limits.max_parked_uploads {
                tracing::warn!(resource = %name, "too many interrupted uploads; this one cannot be resumed");
                return;
            }
            parked.insert(name.clone(), upload);
        }
        let parked = Arc::clone(&self.parked);
        let window = self.services.limits.upload_resume_window;
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            let mut map = parked.lock();
            if map.get(&name).is_some_and(|u| u.generation == generation) {
                map.remove(&name);
                tracing::debug!(resource = %name, "interrupted upload expired");
            }
        });
    }

    async fn write(
        &self,
        mut stream: impl Stream<Item = Result<WriteRequest, Status>> + Unpin,
    ) -> Result<WriteResponse> {
        let idle = self.services.limits.upload_idle_timeout;
        let first = match tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| Error::DeadlineExceeded(format!("no Write request for {idle:?}").into()))?
        {
            Some(Ok(first)) => first,
            Some(Err(status)) => return Err(status.into()),
            None => return Err(Error::invalid("Write stream had no requests")),
        };
        let name = first.resource_name.clone();
        let resource = WriteResource::parse(&name)?;
        let digest = resource.blob.digest;
        self.services.limits.check_blob_size(digest)?;
        let compressed = resource.blob.compressor != Compressor::Identity;
        let complete = || WriteResponse {
            committed_size: if compressed { -1 } else { digest.size() as i64 },
        };
        if self
            .services
            .store
            .contains(&resource.instance, digest)
            .await?
        {
            return Ok(complete());
        }
        let parked = self.parked.lock().remove(&name);
        let mut upload = match parked {
            Some(upload) => upload,
            None if first.write_offset == 0 => self.start_upload(&resource),
            None => {
                return Err(Error::invalid(format!(
                    "write_offset {} given but no upload of {name:?} is in progress; start at 0",
                    first.write_offset
                )));
            }
        };
        let mut next: Option<Result<WriteRequest, Status>> = Some(Ok(first));
        loop {
            let req = match next.take() {
                Some(Ok(req)) => req,
                Some(Err(status)) => {
                    tracing::debug!(resource = %name, committed = upload.committed, %status, "upload interrupted");
                    self.park(name, upload);
                    return Err(status.into());
                }
                None => {
                    self.park(name, upload);
                    return Err(Error::invalid("Write stream ended without finish_write"));
                }
            };
            if !req.resource_name.is_empty() && req.resource_name != name {
                return Err(Error::invalid(
                    "resource_name changed within one Write stream",
                ));
            }
            let offset = u64::try_from(req.write_offset).map_err(|_| {
                Error::invalid(format!("write_offset {} is negative", req.write_offset))
            })?;
            if offset > upload.committed {
                return Err(Error::invalid(format!(
                    "write_offset {offset} skips past the {} bytes committed",
                    upload.committed
                )));
            }
            let skip = (upload.committed - offset) as usize;
            if skip < req.data.len() {
                let data = req.data.slice(skip..);
                upload.committed += data.len() as u64;
                if upload.tx.send(Ok(data)).await.is_err() {
                    // The store stopped reading: either it failed (say why) or the blob was
                    // completed meanwhile by another upload (done early).
                    finish(upload).await?;
                    return Ok(complete());
                }
            }
            if req.finish_write {
                let committed = upload.committed;
                finish(upload).await?;
                return Ok(if compressed {
                    WriteResponse {
                        committed_size: committed as i64,
                    }
                } else {
                    complete()
                });
            }
            next = match tokio::time::timeout(idle, stream.next()).await {
                Ok(next) => next,
                Err(_) => Some(Err(Error::DeadlineExceeded(
                    format!("no data for {idle:?}; the upload is parked for resumption").into(),
                )
                .into())),
            };
        }
    }

    async fn query(&self, req: QueryWriteStatusRequest) -> Result<QueryWriteStatusResponse> {
        let resource = WriteResource::parse(&req.resource_name)?;
        if self
            .services
            .store
            .contains(&resource.instance, resource.blob.digest)
            .await?
        {
            return Ok(QueryWriteStatusResponse {
                committed_size: resource.blob.digest.size() as i64,
                complete: true,
            });
        }
        let committed = self
            .parked
            .lock()
            .get(&req.resource_name)
            .map_or(0, |u| u.committed);
        Ok(QueryWriteStatusResponse {
            committed_size: committed as i64,
            complete: false,
        })
    }
}

/// Closes the upload's channel and waits for the store's verdict.
async fn finish(upload: Upload) -> Result<()> {
    drop(upload.tx);
    upload
        .done
        .await
        .map_err(|_| Error::Internal("upload task vanished".into()))?
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = BoxStream<'static, Result<ReadResponse, Status>>;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        respond(ByteStreamService::read(self, request.into_inner()).await)
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        respond(ByteStreamService::write(self, request.into_inner()).await)
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        respond(self.query(request.into_inner()).await)
    }
}
