//! The worker protocol carries what the scheduler accepts: a lease with a 16 MiB `Command`.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use remexec_proto::worker::v1::worker_message::Message as ToScheduler;
use remexec_proto::worker::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use remexec_proto::worker::v1::{LeaseResult, SchedulerMessage, WorkerMessage, scheduler_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::mem_cas::{MemCas, empty_root, lease, sh, worker};

/// A scheduler that sends one big lease to whoever attaches and reports the result.
struct BigLeaseScheduler {
    results: mpsc::Sender<LeaseResult>,
    outboxes: Mutex<Vec<mpsc::Sender<Result<SchedulerMessage, tonic::Status>>>>,
}

#[tonic::async_trait]
impl WorkerService for BigLeaseScheduler {
    type AttachStream = ReceiverStream<Result<SchedulerMessage, tonic::Status>>;

    async fn attach(
        &self,
        request: tonic::Request<tonic::Streaming<WorkerMessage>>,
    ) -> Result<tonic::Response<Self::AttachStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let mut command = sh("true", &[]);
        // Padding the worker ignores.
        command.output_node_properties = vec!["x".repeat(16 << 20)];
        let big = lease("big", "0", empty_root(), command);
        tx.send(Ok(SchedulerMessage {
            message: Some(scheduler_message::Message::Lease(big)),
        }))
        .await
        .unwrap();
        self.outboxes.lock().push(tx);
        let results = self.results.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if let Some(ToScheduler::Result(r)) = msg.message {
                    let _ = results.send(r).await;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test]
async fn a_lease_with_a_16_mib_command_is_received_and_run() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (results, mut received) = mpsc::channel(4);
    let service = BigLeaseScheduler {
        results,
        outboxes: Mutex::default(),
    };
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(service).max_decoding_message_size(64 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let worker = worker(dir.path(), 1, &Arc::new(MemCas::default()), |_| {});
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.serve(channel, stop).await }
    });
    let result = tokio::time::timeout(Duration::from_secs(60), received.recv())
        .await
        .expect("no lease result: the worker could not take the lease")
        .unwrap();
    assert_eq!(result.lease_id, "big");
    assert_eq!(result.status.map_or(0, |s| s.code), 0);
    assert_eq!(result.result.map(|r| r.exit_code), Some(0));
    stop.cancel();
    let _ = running.await;
    server.abort();
}
