//! [`Worker`]: attaches to a scheduler and runs leases on its executors (the running of one
//! lease is in `execute.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use remexec_core::{BlobStore, Error, Result};
use remexec_proto::worker::v1::scheduler_message::Message as FromScheduler;
use remexec_proto::worker::v1::worker_message::Message as ToScheduler;
use remexec_proto::worker::v1::worker_service_client::WorkerServiceClient;
use remexec_proto::worker::v1::{
    Demand, Executor, Heartbeat, Property, Register, SetExecutors, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::WorkerConfig;
use crate::file_cache::FileCache;
use crate::flexible::Offer;
use crate::isolation::Isolation;

/// A worker: stages inputs, runs commands under an [`Isolation`], uploads outputs.
#[derive(Debug, Clone)]
pub struct Worker {
    pub(crate) config: Arc<WorkerConfig>,
    pub(crate) cas: Arc<dyn BlobStore>,
    pub(crate) isolation: Arc<dyn Isolation>,
    pub(crate) cache: Arc<FileCache>,
    /// Executors running a lease now, with the lease: one lease per executor, whoever sends it.
    pub(crate) busy: Arc<Mutex<HashMap<String, String>>>,
    /// How many sessions with schedulers are open now.
    attached: Arc<std::sync::atomic::AtomicUsize>,
    /// Ticks whenever an executor becomes busy or idle, so that the sessions with other
    /// schedulers withdraw and offer it again.
    pub(crate) busy_changed: Arc<tokio::sync::watch::Sender<()>>,
    /// What a flexible worker offers now; lock it before `busy`.
    pub(crate) offer: Option<Arc<Mutex<Offer>>>,
}

/// Counts an open session for as long as it lives.
struct Attached<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Attached<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How often a flexible worker reconsiders its offer.
const FLEX_TICK: Duration = Duration::from_millis(100);

fn executor_message(id: &str, properties: &[(String, String)]) -> Executor {
    Executor {
        id: id.to_string(),
        properties: properties
            .iter()
            .map(|(n, v)| Property {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
    }
}

impl Worker {
    /// A worker reading and writing blobs through `cas`. Blocks while it empties the work
    /// directory: leftovers of an earlier run are removed even if an action made them
    /// unwritable, and what cannot be removed is moved aside with a warning, so they never
    /// prevent a start. `InvalidArgument` if `config` does not [validate](WorkerConfig::validate).
    pub fn new(
        config: WorkerConfig,
        cas: Arc<dyn BlobStore>,
        isolation: Arc<dyn Isolation>,
    ) -> Result<Self> {
        config.validate()?;
        let cache = FileCache::open(&config.work_dir.join("cache"), config.cache_budget)?;
        let actions = config.work_dir.join("actions");
        // Action directories, and those of sandboxes made ahead of need.
        for dir in [&actions, &config.work_dir.join(crate::ahead::DIR)] {
            if let Some(aside) = remexec_core::fs::reset_dir(dir)? {
                tracing::warn!(
                    dir = %dir.display(),
                    moved_to = %aside.display(),
                    "could not remove leftover action directories; moved them aside"
                );
            }
        }
        // An action run as another user may pass through to its own directory, and no further:
        // the file cache (whose files its inputs are hard links to) is the worker's alone.
        use std::os::unix::fs::PermissionsExt;
        for (dir, mode) in [
            (config.work_dir.clone(), 0o711),
            (config.work_dir.join("cache"), 0o700),
            (actions, 0o711),
            (config.work_dir.join(crate::ahead::DIR), 0o711),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io(format!("restricting {}", dir.display()), e))?;
        }
        let offer = config.flexible.clone().map(|flexible| {
            let ids: Vec<String> = config.executors.iter().map(|e| e.id.clone()).collect();
            Arc::new(Mutex::new(Offer::new(
                flexible,
                &ids,
                std::time::Instant::now(),
            )))
        });
        Ok(Self {
            config: Arc::new(config),
            cas,
            isolation,
            cache,
            busy: Arc::default(),
            attached: Arc::default(),
            busy_changed: Arc::new(tokio::sync::watch::Sender::new(())),
            offer,
        })
    }

    /// Whether the worker is attached to a scheduler now.
    pub fn is_attached(&self) -> bool {
        self.attached.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// What a session offers its scheduler: every executor but those running another
    /// session's lease (`own` are this session's lease ids), so that a worker serving several
    /// schedulers never gets two leases for one executor. `None` for a flexible worker, which
    /// offers shapes instead (it serves one scheduler).
    fn session_offer(&self, own: &HashSet<String>) -> Option<Vec<Executor>> {
        if self.offer.is_some() {
            return None;
        }
        let busy = self.busy.lock().clone();
        let ids = self
            .config
            .executors
            .iter()
            .map(|e| e.id.clone())
            .filter(|id| busy.get(id).is_none_or(|lease| own.contains(lease)))
            .collect();
        Some(self.offered_executors(Some(ids)))
    }

    /// Why the worker cannot take work now, if it cannot: it is not attached to its
    /// scheduler, or the file system of its work directory has less than `min_free_disk` bytes
    /// free (or cannot be read).
    pub fn unready(&self, min_free_disk: u64) -> Option<String> {
        if !self.is_attached() {
            return Some("not attached to the scheduler".into());
        }
        match nix::sys::statvfs::statvfs(&self.config.work_dir) {
            Ok(fs) => {
                // The field types differ between platforms.
                #[allow(clippy::useless_conversion)]
                let free =
                    u64::from(fs.blocks_available()).saturating_mul(u64::from(fs.fragment_size()));
                (free < min_free_disk).then(|| {
                    format!(
                        "{} has {free} bytes free, less than the {min_free_disk} required",
                        self.config.work_dir.display()
                    )
                })
            }
            Err(e) => Some(format!(
                "cannot read the free space of {}: {e}",
                self.config.work_dir.display()
            )),
        }
    }

    /// Bytes held, budget and bytes evicted of the worker's file cache.
    pub fn cache_usage(&self) -> remexec_core::metrics::StoreUsage {
        self.cache.usage()
    }

    /// The executors to register: `ids`, or those offered now (all of them unless flexible).
    fn offered_executors(&self, ids: Option<Vec<String>>) -> Vec<Executor> {
        let ids = ids.or_else(|| self.offer.as_ref().map(|o| o.lock().offered()));
        self.config
            .executors
            .iter()
            .filter(|e| ids.as_ref().is_none_or(|ids| ids.contains(&e.id)))
            .map(|e| executor_message(&e.id, &e.properties))
            .collect()
    }

    /// A flexible worker's shapes, each with its first executor's properties.
    fn shapes(&self) -> Vec<Executor> {
        let Some(offer) = &self.offer else {
            return Vec::new();
        };
        let offer = offer.lock();
        offer
            .shapes()
            .iter()
            .map(|shape| {
                let properties = self
                    .config
                    .executors
                    .iter()
                    .find(|e| shape.executors.first() == Some(&e.id))
                    .map(|e| e.properties.clone())
                    .unwrap_or_default();
                executor_message(&shape.name, &properties)
            })
            .collect()
    }

    /// Moves a flexible worker's offer on, and tells the scheduler when it changes.
    async fn flex_step(&self, tx: &mpsc::Sender<WorkerMessage>, demand: Option<Demand>) {
        let Some(offer) = &self.offer else { return };
        let changed = {
            let mut offer = offer.lock();
            let now = std::time::Instant::now();
            if let Some(demand) = demand {
                let queued: Vec<(String, u64)> = demand
                    .shapes
                    .into_iter()
                    .map(|s| (s.id, s.queued))
                    .collect();
                offer.demand(&queued, now);
            }
            let busy: HashSet<String> = self.busy.lock().keys().cloned().collect();
            offer.step(&busy, now)
        };
        if let Some(ids) = changed {
            let set = SetExecutors {
                executors: self.offered_executors(Some(ids)),
            };
            let _ = tx
                .send(WorkerMessage {
                    message: Some(ToScheduler::SetExecutors(set)),
                })
                .await;
        }
    }

    /// Attaches to the scheduler behind `channel` and serves leases, reconnecting with backoff
    /// whenever the connection drops. Returns only when `stop` fires.
    pub async fn run(&self, channel: Channel, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            let served = self.serve(channel.clone(), stop.clone()).await;
            match served {
                Ok(()) if stop.is_cancelled() => return,
                Ok(()) => {
                    tracing::warn!(worker = %self.config.name, "scheduler closed the connection")
                }
                Err(e) => {
                    tracing::warn!(worker = %self.config.name, error = %e, "scheduler connection failed")
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {},
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// What this worker registers with: its executors but those busy with another session's
    /// lease.
    fn register(&self) -> Register {
        let executors = self
            .session_offer(&HashSet::new())
            .unwrap_or_else(|| self.offered_executors(None));
        Register {
            worker_name: self.config.name.clone(),
            executors,
            heartbeat_interval_ms: self.config.heartbeat.as_millis() as u64,
            shapes: self.shapes(),
        }
    }

    /// Sends a heartbeat on `tx` every interval until `session` ends.
    fn spawn_heartbeat(
        &self,
        tx: mpsc::Sender<WorkerMessage>,
        session: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let every = self.config.heartbeat;
        tokio::spawn(async move {
            while tokio::time::timeout(every, session.cancelled())
                .await
                .is_err()
            {
                let beat = WorkerMessage {
                    message: Some(ToScheduler::Heartbeat(Heartbeat {})),
                };
                if tx.send(beat).await.is_err() {
                    return;
                }
            }
        })
    }

    /// One attach session: registers, then runs leases until the stream ends or `stop` fires.
    /// Leases still running when it ends are cancelled (the scheduler re-queues them).
    pub async fn serve(&self, channel: Channel, stop: CancellationToken) -> Result<()> {
        let (tx, rx) = mpsc::channel::<WorkerMessage>(256);
        let send = |m| WorkerMessage { message: Some(m) };
        // Subscribed first: a change while registering is then seen.
        let mut busy_changes = self.busy_changed.subscribe();
        let register = self.register();
        let mut offered = Some(register.executors.clone());
        tx.send(send(ToScheduler::Register(register)))
            .await
            .map_err(|_| Error::Internal("outbox closed".into()))?;
        let mut inbound = WorkerServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_size)
            .max_encoding_message_size(self.config.max_message_size)
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(Error::from)?
            .into_inner();
        tracing::info!(worker = %self.config.name, "attached to scheduler");
        let _attached = Attached::new(&self.attached);
        // Leases of this session: cancellation and executor.
        let running: Arc<Mutex<HashMap<String, (CancellationToken, String)>>> = Arc::default();
        let session = stop.child_token();
        // However this function ends (even dropped), the session's leases and heartbeats stop.
        let _session_guard = session.clone().drop_guard();
        let heartbeat = self.spawn_heartbeat(tx.clone(), session.clone());
        let mut tick = tokio::time::interval(FLEX_TICK);
        let result = loop {
            let next = tokio::select! {
                next = inbound.message() => next,
                () = session.cancelled() => break Ok(()),
                _ = tick.tick(), if self.offer.is_some() => {
                    self.flex_step(&tx, None).await;
                    continue;
                }
                Ok(()) = busy_changes.changed() => {
                    let own = running.lock().keys().cloned().collect();
                    if let Some(offer) = self.session_offer(&own).filter(|o| offered.as_ref() != Some(o)) {
                        let message = SetExecutors { executors: offer.clone() };
                        let _ = tx.send(send(ToScheduler::SetExecutors(message))).await;
                        offered = Some(offer);
                    }
                    continue;
                }
            };
            match next {
                Ok(Some(msg)) => match msg.message {
                    Some(FromScheduler::Lease(lease)) => {
                        let cancel = session.child_token();
                        running.lock().insert(
                            lease.lease_id.clone(),
                            (cancel.clone(), lease.executor_id.clone()),
                        );
                        let (this, tx, running) = (self.clone(), tx.clone(), Arc::clone(&running));
                        tokio::spawn(async move {
                            let id = lease.lease_id.clone();
                            let result = this.execute(lease, cancel).await;
                            running.lock().remove(&id);
                            let _ = tx.send(send(ToScheduler::Result(result))).await;
                        });
                    }
                    Some(FromScheduler::CancelLease(id)) => {
                        if let Some((token, _)) = running.lock().get(&id) {
                            token.cancel();
                        }
                    }
                    Some(FromScheduler::Demand(demand)) => self.flex_step(&tx, Some(demand)).await,
                    None => {}
                },
                Ok(None) => break Ok(()),
                Err(status) => break Err(Error::from(status)),
            }
        };
        session.cancel();
        heartbeat.abort();
        drop(tx);
        result
    }
}
