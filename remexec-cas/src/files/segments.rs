//! [`Segments`]: small entries packed into append-only segment files, made durable by group
//! commit: one `fdatasync` for every write that arrived while the last one ran.
//!
//! - A segment, `{root}/packed/{id as 8 hex}.seg`, is a run of records: a [`HEADER`]-byte
//!   header (magic, key, written time, content length, CRC-32 of header and content) and the
//!   content. The content of a blob is as long as its digest says; an action result's is not.
//! - Writes append to one active segment under a lock and wait for the sync thread, which
//!   syncs the active segment as long as writes arrive. A write is acknowledged only once its
//!   record is on disk, so a crash loses nothing acknowledged.
//! - Every start opens a new active segment: a torn record, which a kill can leave only at the
//!   end of the segment active then, fails its CRC when segments are read at start and is
//!   skipped, with whatever follows it in that segment.
//! - The table ([`FileTable`](super::FileTable)) keeps each entry's place and tells the
//!   segments which records died (evicted or replaced). A segment with less than half its
//!   bytes alive is compacted: its live records copied to the active segment, then the file
//!   deleted. A segment with none alive is deleted at once.
//! - Uses and references of packed entries, which have no file times to record them, are
//!   appended to `{root}/packed/uses` and read back at start ([`read_uses`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use remexec_core::{Digest, DigestFunction, Error, Result};

use crate::key::Key;

/// Bytes before each record's content.
pub(crate) const HEADER: u64 = 4 + 16 + 1 + 32 + 8 + 8 + 8 + 4;
/// Where the CRC starts in a header: it covers what comes before, and the content.
const CRC_AT: usize = 77;
const MAGIC: &[u8; 4] = b"RXP1";
/// The largest segment written, before the next one is started.
pub(crate) const MAX_SEGMENT: u64 = 64 << 20;
/// The directory of segments, under the table's root (not hex, so never a namespace's).
pub(crate) const DIR: &str = "packed";
const USES: &str = "uses";

/// Where a packed entry's record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) segment: u32,
    /// Its content's length.
    pub(crate) len: u32,
    pub(crate) offset: u64,
}

impl Slot {
    /// The record's bytes on disk: header and content.
    pub(crate) fn record_len(self) -> u64 {
        HEADER + u64::from(self.len)
    }
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    len: u64,
    /// Bytes of the records the table still indexes.
    live: u64,
    /// Sent to be compacted (or deleted) already.
    queued: bool,
    /// Records appended but not yet indexed or given up ([`Appended`]): a compaction waits
    /// for none to be left, or it could miss one.
    pending: u32,
}

#[derive(Debug, Default)]
struct State {
    active: u32,
    segments: BTreeMap<u32, Segment>,
    /// The end of the last record written: `(segment, offset)`.
    written: (u32, u64),
    closed: bool,
}

/// How far the active segment is synced, or that a sync failed (after which no write is
/// acknowledged: what a failed `fdatasync` left on disk is unknown).
type Synced = std::result::Result<(u32, u64), String>;

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    synced: tokio::sync::watch::Sender<Synced>,
}

/// The packed records of a table. See the module docs.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    sync: bool,
    max_segment: u64,
    shared: Arc<Shared>,
    /// Segments due for compaction, for the table's task that compacts them.
    compactions: tokio::sync::mpsc::UnboundedSender<u32>,
}

/// A record appended and durable, until the table indexes it ([`Appended::settle`]); dropped
/// unsettled (the write failed or its caller went away), the record counts as dead.
pub(crate) struct Appended {
    segments: Arc<Segments>,
    slot: Slot,
    settled: bool,
}

impl Appended {
    pub(crate) fn slot(&self) -> Slot {
        self.slot
    }

    /// The record is indexed, or counted dead by the table: it is no longer pending.
    pub(crate) fn settle(mut self) {
        self.settled = true;
        self.segments.unpend(self.slot, false);
    }
}

impl Drop for Appended {
    fn drop(&mut self) {
        if !self.settled {
            self.segments.unpend(self.slot, true);
        }
    }
}

/// What [`Segments::read`] found.
pub(crate) enum Read {
    /// The record's content.
    Content(Bytes),
    /// Its segment is gone: compacted since the caller looked its place up.
    Gone,
    /// The record is not the key's, or fails its CRC.
    Damaged,
}

/// A record read back at start.
pub(crate) struct Record {
    pub(crate) key: Key,
    pub(crate) slot: Slot,
    /// When it was written, in seconds since the epoch.
    pub(crate) written: u64,
}

fn segment_name(id: u32) -> String {
    format!("{id:08x}.seg")
}

fn header(key: &Key, written: u64, content: &[u8]) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..4].copy_from_slice(MAGIC);
    h[4..20].copy_from_slice(&key.ns.to_le_bytes());
    h[20] = key.digest.function().to_proto() as u8;
    h[21..53].copy_from_slice(key.digest.hash());
    h[53..61].copy_from_slice(&key.digest.size().to_le_bytes());
    h[61..69].copy_from_slice(&written.to_le_bytes());
    h[69..77].copy_from_slice(&(content.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[..CRC_AT]);
    crc.update(content);
    h[CRC_AT..].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// The key, written time and content length of a header, if it is one (its CRC is checked
/// with the content).
fn parse_header(h: &[u8]) -> Option<(Key, u64, u64)> {
    if h.len() < HEADER as usize || &h[..4] != MAGIC {
        return None;
    }
    let word = |r: std::ops::Range<usize>| u64::from_le_bytes(h[r].try_into().unwrap_or_default());
    let ns = u128::from_le_bytes(h[4..20].try_into().ok()?);
    let function = DigestFunction::from_proto(i32::from(h[20])).ok()?;
    let hash: [u8; 32] = h[21..53].try_into().ok()?;
    let digest = Digest::new(function, hash, word(53..61));
    Some((Key { ns, digest }, word(61..69), word(69..77)))
}

fn crc_matches(h: &[u8], content: &[u8]) -> bool {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[..CRC_AT]);
    crc.update(content);
    h[CRC_AT..HEADER as usize] == crc.finalize().to_le_bytes()
}

impl Segments {
    /// Opens the segments under `root`, returning every intact record in the order written, and
    /// starts a new active segment and the sync thread. Segments of at most `max_segment`
    /// bytes are written.
    pub(crate) fn open(
        root: &Path,
        sync: bool,
        max_segment: u64,
        compactions: tokio::sync::mpsc::UnboundedSender<u32>,
    ) -> Result<(Arc<Self>, Vec<Record>)> {
        let dir = root.join(DIR);
        if !dir.exists() {
            std::fs::create_dir(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            if sync {
                super::sync_dir(root)?;
            }
        }
        let mut ids: Vec<u32> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u32::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
            })
            .collect();
        ids.sort_unstable();
        let mut state = State::default();
        let mut records = Vec::new();
        for &id in &ids {
            let path = dir.join(segment_name(id));
            let file = File::open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let len = read_records(&path, id, &mut records)?;
            let file = Arc::new(file);
            let segment = Segment {
                file,
                len,
                live: 0,
                queued: false,
                pending: 0,
            };
            state.segments.insert(id, segment);
        }
        let segments = Self {
            dir,
            sync,
            max_segment,
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                wake: Condvar::new(),
                synced: tokio::sync::watch::channel(Ok((0, 0))).0,
            }),
            compactions,
        };
        {
            let mut state = segments.shared.state.lock();
            let next = ids.last().map_or(1, |id| id + 1);
            segments.start_segment(&mut state, next)?;
        }
        if sync {
            let shared = Arc::clone(&segments.shared);
            std::thread::Builder::new()
                .name("remexec-sync".into())
                .spawn(move || sync_loop(&shared))
                .map_err(|e| Error::io("starting the thread that syncs segments", e))?;
        }
        Ok((Arc::new(segments), records))
    }

    /// Opens segment `id` as the active one (its file and directory entry synced with `sync`).
    fn start_segment(&self, state: &mut State, id: u32) -> Result<()> {
        let path = self.dir.join(segment_name(id));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        if self.sync {
            super::sync_dir(&self.dir)?;
        }
        let segment = Segment {
            file: Arc::new(file),
            len: 0,
            live: 0,
            queued: false,
            pending: 0,
        };
        state.segments.insert(id, segment);
        state.active = id;
        state.written = (id, 0);
        Ok(())
    }

    /// Appends `content` as `key`'s record and returns where, once it is durable (at once
    /// without `sync`). Runs on a blocking thread up to the wait for the sync.
    pub(crate) async fn append(
        self: &Arc<Self>,
        key: Key,
        content: Bytes,
        written: u64,
    ) -> Result<Appended> {
        let this = Arc::clone(self);
        // The guard is made on the blocking thread: if this future is dropped meanwhile, the
        // guard is dropped with the thread's result, and the record given up.
        let (appended, end) = remexec_core::fs::blocking(move || {
            let mut state = this.shared.state.lock();
            let (slot, end) = this.write_locked(&mut state, &key, &content, written)?;
            drop(state);
            let appended = Appended {
                segments: this,
                slot,
                settled: false,
            };
            Ok((appended, end))
        })
        .await?;
        let slot = appended.slot;
        if self.sync {
            self.shared.wake.notify_one();
            let mut synced = self.shared.synced.subscribe();
            let result = synced
                .wait_for(|s| s.as_ref().map_or(true, |s| *s >= (slot.segment, end)))
                .await
                .map_err(|e| Error::internal("waiting for a segment sync", e))?;
            if let Err(e) = &*result {
                return Err(Error::io(
                    "syncing a segment",
                    std::io::Error::other(e.clone()),
                ));
            }
        }
        Ok(appended)
    }

    /// `slot`'s record is no longer pending; with `dead`, it is given up.
    fn unpend(&self, slot: Slot, dead: bool) {
        let mut state = self.shared.state.lock();
        if let Some(segment) = state.segments.get_mut(&slot.segment) {
            segment.pending = segment.pending.saturating_sub(1);
        }
        if dead {
            self.dead_locked(&mut state, slot);
        }
    }

    fn write_locked(
        &self,
        state: &mut State,
        key: &Key,
        content: &[u8],
        written: u64,
    ) -> Result<(Slot, u64)> {
        if u32::try_from(content.len()).is_err() {
            return Err(Error::internal(
                "packed segments",
                "an entry over 4 GiB cannot be packed",
            ));
        }
        let len = HEADER + content.len() as u64;
        let active_len = state.segments.get(&state.active).map_or(0, |s| s.len);
        if active_len > 0 && active_len + len > self.max_segment {
            self.seal(state)?;
        }
        let id = state.active;
        let segment = state
            .segments
            .get_mut(&id)
            .ok_or_else(|| Error::internal("packed segments", "the active segment is missing"))?;
        let offset = segment.len;
        let mut record = Vec::with_capacity(len as usize);
        record.extend_from_slice(&header(key, written, content));
        record.extend_from_slice(content);
        segment
            .file
            .write_all_at(&record, offset)
            .map_err(|e| Error::io(format!("writing segment {}", segment_name(id)), e))?;
        segment.len += len;
        segment.live += len;
        segment.pending += 1;
        state.written = (id, offset + len);
        Ok((
            Slot {
                segment: id,
                len: content.len() as u32,
                offset,
            },
            offset + len,
        ))
    }

    /// Syncs the active segment whole and starts the next one.
    fn seal(&self, state: &mut State) -> Result<()> {
        let id = state.active;
        if self.sync
            && let Some(segment) = state.segments.get(&id)
        {
            if let Err(e) = segment.file.sync_data() {
                // As in the sync thread: what a failed sync left on disk is unknown, and a
                // later sync of the same file may not report it again.
                tracing::error!(error = %e, "syncing a segment failed; no packed write is acknowledged from now on");
                let _ = self.shared.synced.send_replace(Err(e.to_string()));
                return Err(Error::io(
                    format!("syncing segment {}", segment_name(id)),
                    e,
                ));
            }
            let end = (id, segment.len);
            self.shared.synced.send_modify(|s| {
                if let Ok(s) = s {
                    *s = (*s).max(end);
                }
            });
        }
        self.start_segment(state, id + 1)?;
        // Records that died while it was active did not make it due then.
        let active = state.active;
        if let Some(segment) = state.segments.get_mut(&id)
            && let Some(due) = Self::due(active, id, segment)
        {
            let _ = self.compactions.send(due);
        }
        Ok(())
    }

    /// Reads `key`'s record at `slot`. Blocking.
    pub(crate) fn read(&self, key: &Key, slot: Slot) -> Result<Read> {
        let file = {
            let state = self.shared.state.lock();
            match state.segments.get(&slot.segment) {
                Some(segment) => Arc::clone(&segment.file),
                None => return Ok(Read::Gone),
            }
        };
        let mut record = vec![0u8; slot.record_len() as usize];
        if let Err(e) = file.read_exact_at(&mut record, slot.offset) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Ok(Read::Damaged);
            }
            let name = segment_name(slot.segment);
            return Err(Error::io(format!("reading segment {name}"), e));
        }
        let (h, content) = record.split_at(HEADER as usize);
        Ok(match parse_header(h) {
            Some((found, _, len))
                if found == *key && len == u64::from(slot.len) && crc_matches(h, content) =>
            {
                Read::Content(Bytes::from(record).slice(HEADER as usize..))
            }
            _ => Read::Damaged,
        })
    }

    /// Counts `key`'s record at `slot` as alive (for entries indexed at start).
    pub(crate) fn alive(&self, slot: Slot) {
        if let Some(segment) = self.shared.state.lock().segments.get_mut(&slot.segment) {
            segment.live += slot.record_len();
        }
    }

    /// Counts the record at `slot` as dead, and sends its segment to be compacted if that
    /// makes it due (never the active one), once.
    pub(crate) fn dead(&self, slot: Slot) {
        self.dead_locked(&mut self.shared.state.lock(), slot);
    }

    fn dead_locked(&self, state: &mut State, slot: Slot) {
        let active = state.active;
        let Some(segment) = state.segments.get_mut(&slot.segment) else {
            return;
        };
        segment.live = segment.live.saturating_sub(slot.record_len());
        if let Some(id) = Self::due(active, slot.segment, segment) {
            let _ = self.compactions.send(id);
        }
    }

    fn due(active: u32, id: u32, segment: &mut Segment) -> Option<u32> {
        // An empty segment left by an earlier start (none written to it) is due too.
        let half_alive = segment.live > 0 && segment.live * 2 >= segment.len;
        if id == active || segment.queued || half_alive {
            return None;
        }
        segment.queued = true;
        Some(id)
    }

    /// Sends every segment due for compaction now (after counting what is alive at start).
    pub(crate) fn queue_due(&self) {
        let mut state = self.shared.state.lock();
        let active = state.active;
        for (id, segment) in &mut state.segments {
            if let Some(id) = Self::due(active, *id, segment) {
                let _ = self.compactions.send(id);
            }
        }
    }

    /// Whether segment `id` has records appended but not yet indexed: a compaction must wait.
    pub(crate) fn pending(&self, id: u32) -> bool {
        let state = self.shared.state.lock();
        state.segments.get(&id).is_some_and(|s| s.pending > 0)
    }

    /// Segment `id` is no longer queued (its compaction failed): a later death queues it again.
    pub(crate) fn unqueue(&self, id: u32) {
        if let Some(segment) = self.shared.state.lock().segments.get_mut(&id) {
            segment.queued = false;
        }
    }

    /// Forgets segment `id` and deletes its file (readers that hold it finish their reads).
    pub(crate) fn remove(&self, id: u32) {
        if self.shared.state.lock().segments.remove(&id).is_some() {
            let path = self.dir.join(segment_name(id));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a compacted segment");
            }
        }
    }

    /// The bytes of dead records (evicted or replaced) in segments not due for compaction:
    /// at most half of each. Those of a segment due are about to go. The table counts them
    /// against its budget, so that what is on disk stays within it (records' headers, 81
    /// bytes each, are not counted, as a file's unused last block is not).
    pub(crate) fn overhead(&self) -> u64 {
        let state = self.shared.state.lock();
        let dead = |s: &Segment| {
            if s.queued {
                0
            } else {
                s.len.saturating_sub(s.live)
            }
        };
        state.segments.values().map(dead).sum()
    }

    /// `(files, bytes)` of the segments on disk.
    pub(crate) fn footprint(&self) -> (usize, u64) {
        let state = self.shared.state.lock();
        (
            state.segments.len(),
            state.segments.values().map(|s| s.len).sum(),
        )
    }

    /// The file uses of packed entries are appended to.
    pub(crate) fn uses_path(root: &Path) -> PathBuf {
        root.join(DIR).join(USES)
    }
}

impl Drop for Segments {
    fn drop(&mut self) {
        self.shared.state.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

/// Syncs the active segment while writes arrive, publishing how far it is durable.
fn sync_loop(shared: &Shared) {
    let mut done = (0u32, 0u64);
    loop {
        let (file, end) = {
            let mut state = shared.state.lock();
            while state.written <= done && !state.closed {
                shared.wake.wait(&mut state);
            }
            if state.closed {
                return;
            }
            let Some(segment) = state.segments.get(&state.written.0) else {
                done = state.written;
                continue;
            };
            (Arc::clone(&segment.file), state.written)
        };
        if let Err(e) = file.sync_data() {
            tracing::error!(error = %e, "syncing a segment failed; no packed write is acknowledged from now on");
            let _ = shared.synced.send_replace(Err(e.to_string()));
            return;
        }
        done = end;
        shared.synced.send_modify(|s| {
            if let Ok(s) = s {
                *s = (*s).max(end);
            }
        });
    }
}

/// Appends the intact records of segment `id` at `path` to `out`; returns its length. Reading
/// stops at the first record that is not intact (a torn write at the end of the segment
/// active at a crash).
fn read_records(path: &Path, id: u32, out: &mut Vec<Record>) -> Result<u64> {
    let data =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut offset = 0usize;
    while offset + HEADER as usize <= data.len() {
        let h = &data[offset..offset + HEADER as usize];
        let Some((key, written, len)) = parse_header(h) else {
            break;
        };
        let start = offset + HEADER as usize;
        let end = usize::try_from(len)
            .ok()
            .filter(|len| u32::try_from(*len).is_ok())
            .and_then(|n| start.checked_add(n))
            .filter(|end| *end <= data.len());
        let Some(end) = end.filter(|end| crc_matches(h, &data[start..*end])) else {
            break;
        };
        out.push(Record {
            key,
            slot: Slot {
                segment: id,
                len: len as u32,
                offset: offset as u64,
            },
            written,
        });
        offset = end;
    }
    if offset < data.len() {
        tracing::warn!(path = %path.display(), at = offset, len = data.len(), "segment ends in a damaged or torn record; what follows is skipped");
    }
    Ok(data.len() as u64)
}

/// One use journal record: key, last use and last reference (0 if none), in seconds.
const USE_RECORD: usize = 16 + 1 + 32 + 8 + 8 + 8;

/// Appends a use of `key` at `now` (a reference too, with `referenced`) to `out`.
pub(crate) fn write_use(
    out: &mut impl std::io::Write,
    key: &Key,
    now: u64,
    referenced: u64,
) -> std::io::Result<()> {
    let mut r = [0u8; USE_RECORD];
    r[..16].copy_from_slice(&key.ns.to_le_bytes());
    r[16] = key.digest.function().to_proto() as u8;
    r[17..49].copy_from_slice(key.digest.hash());
    r[49..57].copy_from_slice(&key.digest.size().to_le_bytes());
    r[57..65].copy_from_slice(&now.to_le_bytes());
    r[65..73].copy_from_slice(&referenced.to_le_bytes());
    out.write_all(&r)
}

/// The latest use and reference of each key in the use journal under `root` (a torn last
/// record is ignored).
pub(crate) fn read_uses(root: &Path) -> std::collections::HashMap<Key, (u64, u64)> {
    read_uses_at(&Segments::uses_path(root))
}

fn read_uses_at(path: &Path) -> std::collections::HashMap<Key, (u64, u64)> {
    let mut uses = std::collections::HashMap::new();
    let data = std::fs::read(path).unwrap_or_default();
    for r in data.chunks_exact(USE_RECORD) {
        let word = |at: usize| u64::from_le_bytes(r[at..at + 8].try_into().unwrap_or_default());
        let Ok(function) = DigestFunction::from_proto(i32::from(r[16])) else {
            continue;
        };
        let Ok(hash) = r[17..49].try_into() else {
            continue;
        };
        let ns = u128::from_le_bytes(r[..16].try_into().unwrap_or_default());
        let key = Key {
            ns,
            digest: Digest::new(function, hash, word(49)),
        };
        let entry: &mut (u64, u64) = uses.entry(key).or_default();
        entry.0 = entry.0.max(word(57));
        entry.1 = entry.1.max(word(65));
    }
    uses
}

/// Replaces the use journal under `root` with `uses`, atomically.
pub(crate) fn rewrite_uses(root: &Path, uses: &[(Key, u64, u64)]) -> Result<()> {
    rewrite_uses_at(&Segments::uses_path(root), uses)
}

fn rewrite_uses_at(path: &Path, uses: &[(Key, u64, u64)]) -> Result<()> {
    let mut out = Vec::with_capacity(uses.len() * USE_RECORD);
    for (key, used, referenced) in uses {
        write_use(&mut out, key, *used, *referenced)
            .map_err(|e| Error::io("writing the use journal", e))?;
    }
    let temp = path.with_extension("new");
    let write = |temp: &Path| {
        let mut file = File::create(temp)?;
        std::io::Write::write_all(&mut file, &out)?;
        // Synced before the rename, so that a crash leaves the old journal or the whole new one.
        file.sync_data()
    };
    write(&temp)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| Error::io(format!("rewriting {}", path.display()), e))
}

/// Bytes the use journal may grow by before it is rewritten without repeats (or its size
/// then, if larger).
const JOURNAL_SLACK: u64 = 16 << 20;

/// The use journal as the recorder thread appends to it. A use is recorded at most once a
/// minute per entry, but a busy store's entries are used every minute: when the journal has
/// grown by [`JOURNAL_SLACK`] (or its size, if larger) it is rewritten with the latest record
/// of each key. (At start it is rewritten with only the entries still packed.)
pub(crate) struct UseJournal {
    path: PathBuf,
    out: std::io::BufWriter<File>,
    appended: u64,
    limit: u64,
}

impl UseJournal {
    pub(crate) fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            out: std::io::BufWriter::new(file),
            appended: 0,
            limit: JOURNAL_SLACK.max(size),
        })
    }

    /// Appends a use of `key` at `now` (a reference too, with `referenced`).
    pub(crate) fn record(&mut self, key: &Key, now: u64, referenced: bool) {
        let referenced = if referenced { now } else { 0 };
        if write_use(&mut self.out, key, now, referenced).is_ok() {
            self.appended += USE_RECORD as u64;
        }
    }

    /// Writes out what is buffered (a use lost to a crash costs only precision), and rewrites
    /// the journal once it has grown enough.
    pub(crate) fn flush(&mut self) {
        use std::io::Write;
        let _ = self.out.flush();
        if self.appended > self.limit {
            self.appended = 0;
            let latest: Vec<_> = read_uses_at(&self.path)
                .into_iter()
                .map(|(k, (used, referenced))| (k, used, referenced))
                .collect();
            let size = (latest.len() * USE_RECORD) as u64;
            match rewrite_uses_at(&self.path, &latest).and_then(|()| {
                Self::open(self.path.clone()).map_err(|e| Error::io("reopening the use journal", e))
            }) {
                Ok(fresh) => {
                    *self = Self {
                        limit: JOURNAL_SLACK.max(size),
                        ..fresh
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not rewrite the use journal"),
            }
        }
    }
}
