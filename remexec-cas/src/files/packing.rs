//! The table's packed entries: written to, read from and compacted out of [`Segments`].

use std::sync::{Arc, Weak};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use remexec_core::fs::blocking;
use remexec_core::{ChunkStream, Result};

use super::segments::{Appended, Read, Segments, Slot};
use super::{FileTable, Opened, Times, size_mismatch, unix_secs};
use crate::key::Key;

impl FileTable {
    /// Reads `data`, which must be `len` bytes, into memory and packs it under `key`: stored
    /// once durable with the writes that arrived meanwhile (see [`Segments`]).
    pub(super) async fn write_packed(
        &self,
        segments: &Arc<Segments>,
        key: Key,
        mut data: ChunkStream,
        len: u64,
    ) -> Result<()> {
        let digest = key.digest;
        let mut content = BytesMut::new();
        let mut single: Option<Bytes> = None;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            let got = single.as_ref().map_or(content.len(), Bytes::len) + chunk.len();
            if got as u64 > len {
                return Err(size_mismatch(digest, got as u64, false));
            }
            // One chunk, the usual case, is kept as it came.
            match single.take() {
                None if content.is_empty() => single = Some(chunk),
                first => {
                    if let Some(first) = first {
                        content.extend_from_slice(&first);
                    }
                    content.extend_from_slice(&chunk);
                }
            }
        }
        let content = single.unwrap_or_else(|| content.freeze());
        if content.len() as u64 != len {
            return Err(size_mismatch(digest, content.len() as u64, true));
        }
        let now = unix_secs(SystemTime::now());
        let appended = segments.append(key, content, now).await?;
        self.commit_packed(key, appended, now)
    }

    /// Indexes `key`'s record, durable now, evicting as needed.
    fn commit_packed(&self, key: Key, appended: Appended, now: u64) -> Result<()> {
        let slot = appended.slot();
        let mut index = self.index.lock();
        // Records that died since (evicted, replaced) count against the budget.
        self.fit_budget(&mut index);
        let len = u64::from(slot.len);
        if let Err(e) = self.check_room_locked(&mut index, &key, len) {
            drop(index);
            // Given up: the record is dead.
            drop(appended);
            return Err(e);
        }
        // A record replacing an entry already referenced takes over its reference.
        let referenced = index.peek(&key).map_or(0, |t| t.referenced);
        let times = Times {
            used: now,
            referenced,
            place: Some(slot),
        };
        self.publish(&key, true);
        let removed = index.insert(key, len, times);
        // Under the lock, as `commit` does: a file deleted here must be the one replaced or
        // evicted, not one a concurrent write renamed into place after.
        self.replaced(&key, Some(slot), removed);
        drop(index);
        appended.settle();
        if referenced > 0 {
            self.record_uses(vec![(key, true, true)]);
        }
        Ok(())
    }

    /// Forgets `key` if its record is still the damaged or lost one at `slot`.
    pub(super) fn drop_damaged(&self, key: &Key, slot: Slot) {
        tracing::error!(digest = %key.digest, segment = slot.segment, offset = slot.offset, "packed entry is damaged or lost; dropping it");
        let mut index = self.index.lock();
        if index.peek(key).is_some_and(|t| t.place == Some(slot)) {
            index.remove(key);
            drop(index);
            self.publish(key, false);
            self.free(key, Some(slot));
        }
    }

    /// Reads `key`'s record at `slot`: `None` if it was compacted meanwhile (look it up again),
    /// else what is there. A damaged record is dropped and reads as absent.
    pub(super) async fn read_packed(
        &self,
        key: &Key,
        slot: Slot,
    ) -> Result<Option<Option<Opened>>> {
        let Some(segments) = self.segments.clone() else {
            return Ok(Some(None));
        };
        let k = *key;
        match blocking(move || segments.read(&k, slot)).await? {
            Read::Content(content) => Ok(Some(Some(Opened::Packed(content)))),
            Read::Gone => Ok(None),
            Read::Damaged => {
                self.drop_damaged(key, slot);
                Ok(Some(None))
            }
        }
    }

    /// Copies the live records of segment `id` to the active segment, each keeping its last
    /// use, then deletes the segment. Returns `false`, having done nothing, while records
    /// appended to it wait to be indexed: the list of live records would miss them.
    async fn compact(&self, segments: &Arc<Segments>, id: u32) -> Result<bool> {
        // No record can be appended to it any more (it is not the active segment), so none
        // pending now means none missed below.
        if segments.pending(id) {
            return Ok(false);
        }
        let live: Vec<(Key, Slot, u64)> = {
            let index = self.index.lock();
            index
                .iter()
                .filter_map(|(k, t)| Some((*k, t.place.filter(|p| p.segment == id)?, t.used)))
                .collect()
        };
        let mut moved = 0u64;
        for (key, slot, used) in live {
            let s = Arc::clone(segments);
            let content = match blocking(move || s.read(&key, slot)).await? {
                Read::Content(content) => content,
                Read::Gone => return Ok(true),
                Read::Damaged => {
                    self.drop_damaged(&key, slot);
                    continue;
                }
            };
            let appended = segments.append(key, content, used).await?;
            let new = appended.slot();
            let mut index = self.index.lock();
            match index.peek_mut(&key) {
                Some(times) if times.place == Some(slot) => {
                    times.place = Some(new);
                    moved += u64::from(slot.len);
                    appended.settle();
                }
                // Replaced or evicted meanwhile: the copy is dead.
                _ => drop(appended),
            }
        }
        segments.remove(id);
        self.fit_budget(&mut self.index.lock());
        tracing::debug!(segment = id, moved_bytes = moved, "segment compacted");
        Ok(true)
    }
}

/// Compacts each segment sent on `queue`, while the table lives.
pub(super) async fn compact_loop(
    table: Weak<FileTable>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<u32>,
) {
    while let Some(id) = queue.recv().await {
        loop {
            let Some(table) = table.upgrade() else {
                return;
            };
            let Some(segments) = table.segments.clone() else {
                return;
            };
            match table.compact(&segments, id).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(segment = id, error = %e, "could not compact a segment; it stays as it is");
                    segments.unqueue(id);
                    break;
                }
            }
            drop((table, segments));
            // Records wait to be indexed, for a sync at most.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
