//! Build events: the Build Event Service a client streams its builds to (Bazel's
//! `--bes_backend`), the invocations kept from them on disk, and the pages that show them.
//!
//! - [`BuildEvents`] holds the [`InvocationStore`] (one redb file,
//!   crash-safe, bounded by a count and bytes, oldest evicted first) and the invocations being
//!   streamed now.
//! - [`BuildEvents::service`] is `google.devtools.build.v1.PublishBuildEvent`, for a node's client
//!   port (it needs the `build-events` permission there); events are acknowledged in order,
//!   once committed ([`service`]).
//! - [`BuildEvents::follow`] records each remote action a [`Scheduler`] ends
//!   under the invocation that its `RequestMetadata.tool_invocation_id` names.
//! - [`pages`] renders the invocation list and an invocation's page, which the status pages
//!   ([`crate::pages::pages`]) serve on the admin port.
//!
//! ```
//! use remexec_scheduler::events::{BuildEvents, BuildEventsOptions};
//!
//! # fn main() -> remexec_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let events = BuildEventsOptions::default().open(dir.path())?.expect("on by default");
//! let routes = tonic::service::Routes::default().add_service(events.service());
//! # let _ = routes;
//! assert!(events.invocations(10).is_empty());
//! # Ok(())
//! # }
//! ```

pub mod invocation;
pub mod pages;
pub mod service;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use remexec_core::metrics::Metrics;
use remexec_core::{Error, Result};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use self::invocation::{Invocation, MAX_INVOCATION_BYTES, RemoteAction, Row};
use self::store::{InvocationStore, Limits, Record};
use crate::{ActionRecord, Scheduler};

/// The service's name, as reflection lists it.
pub use remexec_proto::build_events::v1::publish_build_event_server::SERVICE_NAME;

/// Most finished actions waiting to be recorded; past it they are not recorded.
const ACTION_QUEUE: usize = 10_000;

/// `[build_events]`: where and how much to keep.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BuildEventsOptions {
    /// Serve the Build Event Service and the invocation pages (default: on).
    pub enabled: bool,
    /// The directory of the store (default: `build-events` in the data directory).
    pub dir: Option<PathBuf>,
    /// Most invocations kept (default 1000).
    pub max_invocations: usize,
    /// Most bytes of invocations kept (default 2 GiB).
    pub max_bytes: bytesize::ByteSize,
    /// Most event streams open at once; past it a stream gets `RESOURCE_EXHAUSTED` (default 64).
    pub max_streams: usize,
}

impl Default for BuildEventsOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            max_invocations: 1000,
            max_bytes: bytesize::ByteSize::gib(2),
            max_streams: 64,
        }
    }
}

impl BuildEventsOptions {
    /// The build events these options describe, with their store in `dir` or else in
    /// `data_dir/build-events`; `None` when off. `InvalidArgument` for zero limits.
    pub fn open(&self, data_dir: &Path) -> Result<Option<BuildEvents>> {
        if !self.enabled {
            return Ok(None);
        }
        if self.max_invocations == 0 || self.max_bytes.as_u64() == 0 || self.max_streams == 0 {
            return Err(Error::invalid(
                "[build_events] max_invocations, max_bytes and max_streams must be above 0",
            ));
        }
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| data_dir.join("build-events"));
        let limits = Limits {
            max_invocations: self.max_invocations,
            max_bytes: self.max_bytes.as_u64(),
        };
        let store = InvocationStore::open(&dir.join("invocations.redb"), limits)?;
        Ok(Some(BuildEvents::new(store, self.max_streams)))
    }
}

type Live = Arc<tokio::sync::Mutex<Invocation>>;

/// An open stream's place in the limit, counted in the metrics while it is held.
struct OpenStream {
    _permit: OwnedSemaphorePermit,
    metrics: Option<Metrics>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.build_event_stream(false);
        }
    }
}

#[derive(Debug)]
struct Inner {
    store: InvocationStore,
    live: Mutex<HashMap<String, Live>>,
    /// Held while an invocation is attached (looked up, loaded, made live), so that no task
    /// makes live a copy older than what another committed and let go meanwhile.
    attaching: tokio::sync::Mutex<()>,
    streams: Arc<Semaphore>,
    max_streams: usize,
    metrics: std::sync::OnceLock<Metrics>,
}

/// Build events: see the [module](self). Cheap to clone.
#[derive(Clone, Debug)]
pub struct BuildEvents {
    inner: Arc<Inner>,
}

impl BuildEvents {
    /// Over `store`, with at most `max_streams` event streams open at once.
    pub fn new(store: InvocationStore, max_streams: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                live: Mutex::new(HashMap::new()),
                attaching: tokio::sync::Mutex::new(()),
                streams: Arc::new(Semaphore::new(max_streams)),
                max_streams,
                metrics: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The Build Event Service, for a client port (whose policy should ask for the
    /// `build-events` permission: `remexec_core::auth` does).
    pub fn service(
        &self,
    ) -> remexec_proto::build_events::v1::publish_build_event_server::PublishBuildEventServer<
        impl remexec_proto::build_events::v1::publish_build_event_server::PublishBuildEvent,
    > {
        remexec_proto::build_events::v1::publish_build_event_server::PublishBuildEventServer::new(
            service::Service(self.clone()),
        )
        .max_decoding_message_size(service::MAX_EVENT_BYTES)
    }

    /// Counts into `metrics` (`remexec_build_events_total`, `remexec_build_event_streams`,
    /// `remexec_invocations_kept`); the first call counts, later ones change nothing.
    pub fn count_into(&self, metrics: &Metrics) {
        if self.inner.metrics.set(metrics.clone()).is_ok() {
            // Weak: the metrics must not keep the store (and its open file) alive.
            let inner = Arc::downgrade(&self.inner);
            metrics.on_scrape(move |m| {
                if let Some(inner) = inner.upgrade() {
                    let (count, bytes) = inner.store.usage();
                    m.invocations_kept(count, bytes);
                }
            });
        }
    }

    /// The metrics counted into, if any.
    fn metrics(&self) -> Option<&Metrics> {
        self.inner.metrics.get()
    }

    /// Records each action `scheduler` ends under its invocation, if that invocation is kept
    /// here (actions of builds that stream no events are not recorded). Call within a Tokio
    /// runtime.
    pub fn follow(&self, scheduler: &Scheduler) {
        let (tx, rx) = mpsc::channel::<(String, RemoteAction)>(ACTION_QUEUE);
        let events = self.clone();
        scheduler.on_action_finished(Box::new(move |record: &ActionRecord| {
            if record.tool_invocation_id.is_empty() {
                return;
            }
            let action = RemoteAction {
                instance: record.instance.clone(),
                action: record.action.clone(),
                mnemonic: invocation::text(&record.mnemonic),
                target: invocation::text(&record.target),
                outcome: record.outcome.as_str().to_string(),
                failed: record.outcome.is_failure(),
                exit_code: record.exit_code,
                run_secs: record
                    .phases
                    .iter()
                    .find(|(p, _)| *p == remexec_core::metrics::Phase::Run)
                    .map_or(0.0, |(_, s)| *s),
                response: record.response.clone(),
            };
            if tx
                .try_send((record.tool_invocation_id.clone(), action))
                .is_err()
            {
                tracing::debug!("build events: an action was not recorded (queue full)");
            }
        }));
        tokio::spawn(events.record_actions(rx));
    }

    /// Records finished actions as they come, a batch (and a commit) per invocation at a time.
    async fn record_actions(self, mut rx: mpsc::Receiver<(String, RemoteAction)>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 1000).await > 0 {
            let mut by_invocation: HashMap<String, Vec<RemoteAction>> = HashMap::new();
            for (id, action) in batch.drain(..) {
                by_invocation.entry(id).or_default().push(action);
            }
            for (id, actions) in by_invocation {
                if service::check_id(&id, "id").is_err() || !self.knows(&id) {
                    continue;
                }
                let result = async {
                    let entry = self.attach(&id, "").await?;
                    let mut inv = entry.lock_owned().await;
                    for action in actions {
                        inv.add_action(action);
                    }
                    self.commit(inv).await.1
                };
                if let Err(e) = result.await {
                    tracing::warn!(invocation = %id, error = %e, "build events: could not record actions");
                }
                self.detach();
            }
        }
    }

    /// Whether invocation `id` is being streamed or is kept.
    fn knows(&self, id: &str) -> bool {
        let live = self.inner.live.lock().contains_key(id);
        live || self.inner.store.contains(id)
    }

    /// A place in the limit of open streams, or `RESOURCE_EXHAUSTED`.
    fn open_stream(&self) -> Result<OpenStream> {
        let permit = Arc::clone(&self.inner.streams)
            .try_acquire_owned()
            .map_err(|_| {
                Error::ResourceExhausted(
                    format!(
                        "{} build event streams are open, the most this server takes; retry later",
                        self.inner.max_streams
                    )
                    .into(),
                )
            })?;
        if let Some(m) = self.metrics() {
            m.build_event_stream(true);
        }
        Ok(OpenStream {
            _permit: permit,
            metrics: self.metrics().cloned(),
        })
    }

    /// The live invocation `id`: being streamed, else as stored, else new.
    async fn attach(&self, id: &str, build_id: &str) -> Result<Live> {
        let _attaching = self.inner.attaching.lock().await;
        if let Some(live) = self.inner.live.lock().get(id) {
            return Ok(Arc::clone(live));
        }
        let events = self.clone();
        let owned = id.to_string();
        let stored = tokio::task::spawn_blocking(move || events.inner.store.load(&owned))
            .await
            .map_err(|e| Error::internal("loading an invocation", e))??;
        let inv = stored.unwrap_or_else(|| Invocation::new(id, build_id));
        let mut live = self.inner.live.lock();
        // Another stream may have attached it meanwhile: that one wins.
        Ok(Arc::clone(
            live.entry(id.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(inv))),
        ))
    }

    /// Forgets live invocations nobody holds any more.
    fn detach(&self) {
        self.inner
            .live
            .lock()
            .retain(|_, live| Arc::strong_count(live) > 1);
    }

    /// Writes the invocation `inv` holds to the store, encoding it on a blocking thread; durable
    /// when it returns `Ok`. Gives the guard back either way.
    async fn commit(
        &self,
        mut inv: tokio::sync::OwnedMutexGuard<Invocation>,
    ) -> (tokio::sync::OwnedMutexGuard<Invocation>, Result<()>) {
        let events = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut record = Record::of(&inv);
            if let Ok(r) = &record
                && r.bytes() > MAX_INVOCATION_BYTES
                && !inv.full
            {
                inv.full = true;
                record = Record::of(&inv);
            }
            let result = record.and_then(|r| {
                let len = r.bytes();
                events.inner.store.write(r).map(|()| len)
            });
            if let Ok(len) = &result {
                inv.dirty = false;
                inv.record_bytes = *len;
            }
            let result = result.map(|_| ());
            (inv, result)
        })
        .await;
        match joined {
            Ok(done) => done,
            // The blocking task panicked: the guard went with it; nothing is acknowledged.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The newest `limit` invocations, newest first.
    pub fn invocations(&self, limit: usize) -> Vec<Row> {
        self.inner.store.rows(limit)
    }

    /// Invocation `id`: as being streamed now, else as stored; `None` if unknown.
    pub async fn invocation(&self, id: &str) -> Result<Option<Invocation>> {
        let live = self.inner.live.lock().get(id).cloned();
        if let Some(live) = live {
            return Ok(Some(live.lock().await.clone()));
        }
        let events = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || events.inner.store.load(&id))
            .await
            .map_err(|e| Error::internal("loading an invocation", e))?
    }

    /// Invocations kept, and the bytes of their records.
    pub fn usage(&self) -> (usize, u64) {
        self.inner.store.usage()
    }
}
