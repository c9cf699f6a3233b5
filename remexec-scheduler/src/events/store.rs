//! [`InvocationStore`]: invocations on disk, in one [redb](https://docs.rs/redb) file.
//!
//! redb commits with copy-on-write B-trees and a checksummed commit slot, so a crash (or a
//! power cut) leaves the last committed state: an invocation is either as it was after its last
//! commit, or as before. Each invocation is one record (its [`Invocation`] as JSON) plus a row
//! for the list, kept in memory as well. The store is bounded by a count and a size in bytes;
//! past either, the oldest invocations (by when they were first stored) are deleted in the same
//! transaction as the write that went past.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use parking_lot::Mutex;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use remexec_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::invocation::{Invocation, Row};

/// Invocation id → its [`Invocation`], as JSON.
const INVOCATIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("invocations");
/// Invocation id → its [`Entry`], as JSON.
const ROWS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("rows");

/// Bytes of redb's page cache.
const CACHE_BYTES: usize = 32 << 20;

/// How much the store keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most invocations.
    pub max_invocations: usize,
    /// Most bytes of invocation records.
    pub max_bytes: u64,
}

/// What the list knows of a stored invocation.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    /// Its place in the order of first writes: the oldest is evicted first.
    order: u64,
    /// Bytes of its record.
    bytes: u64,
    row: Row,
}

/// An invocation, encoded for [`InvocationStore::write`].
#[derive(Debug)]
pub struct Record {
    id: String,
    record: Vec<u8>,
    row: Row,
}

impl Record {
    /// Encodes `invocation`.
    pub fn of(invocation: &Invocation) -> Result<Self> {
        Ok(Self {
            id: invocation.id.clone(),
            record: serde_json::to_vec(invocation).map_err(json_error)?,
            row: invocation.row(),
        })
    }

    /// Bytes of the encoded invocation.
    pub fn bytes(&self) -> usize {
        self.record.len()
    }
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    by_order: BTreeMap<u64, String>,
    bytes: u64,
    next: u64,
}

/// Invocations on disk, bounded; see the [module](self).
#[derive(Debug)]
pub struct InvocationStore {
    db: redb::Database,
    index: Mutex<Index>,
    writer: Mutex<()>,
    limits: Limits,
}

fn db_error(what: &str) -> impl FnOnce(redb::Error) -> Error + '_ {
    move |e| Error::internal(format!("the build event store: {what}"), e)
}

fn json_error(e: serde_json::Error) -> Error {
    Error::internal("the build event store: a record", e)
}

impl InvocationStore {
    /// Opens (or creates) the store at `path`. A store a crash interrupted is recovered to its
    /// last commit.
    pub fn open(path: &Path, limits: Limits) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        // redb's default cache is 1 GiB; records are read one at a time.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| db_error("opening")(e.into()))
            .map_err(|e| Error::internal(format!("at {}", path.display()), e))?;
        let index = (|| -> std::result::Result<Index, redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(INVOCATIONS)?;
            txn.open_table(ROWS)?;
            txn.commit()?;
            let txn = db.begin_read()?;
            let rows = txn.open_table(ROWS)?;
            let mut index = Index::default();
            let mut unreadable = Vec::new();
            for item in rows.iter()? {
                let (id, entry) = item?;
                let id = id.value().to_string();
                match serde_json::from_slice::<Entry>(entry.value()) {
                    Ok(entry) => {
                        index.next = index.next.max(entry.order + 1);
                        index.bytes += entry.bytes;
                        index.by_order.insert(entry.order, id.clone());
                        index.entries.insert(id, entry);
                    }
                    Err(_) => unreadable.push(id),
                }
            }
            drop(rows);
            drop(txn);
            // Rows no version can read (there are none unless a record format changes without
            // defaults): their records would stay uncounted, so they go.
            if !unreadable.is_empty() {
                tracing::warn!(
                    count = unreadable.len(),
                    "build event store: deleting unreadable invocations"
                );
                let txn = db.begin_write()?;
                {
                    let mut records = txn.open_table(INVOCATIONS)?;
                    let mut rows = txn.open_table(ROWS)?;
                    for id in &unreadable {
                        records.remove(id.as_str())?;
                        rows.remove(id.as_str())?;
                    }
                }
                txn.commit()?;
            }
            Ok(index)
        })()
        .map_err(db_error("reading the index"))?;
        Ok(Self {
            db,
            index: Mutex::new(index),
            writer: Mutex::new(()),
            limits,
        })
    }

    /// Whether the store holds `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.index.lock().entries.contains_key(id)
    }

    /// The invocation `id`, or `None`.
    pub fn load(&self, id: &str) -> Result<Option<Invocation>> {
        let bytes = (|| -> std::result::Result<Option<Vec<u8>>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(INVOCATIONS)?;
            Ok(table.get(id)?.map(|v| v.value().to_vec()))
        })()
        .map_err(db_error("reading an invocation"))?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(json_error))
            .transpose()
    }

    /// Stores `invocation` (replacing what was stored under its id), then evicts the oldest
    /// others while the store is over its limits. Durable when it returns.
    pub fn save(&self, invocation: &Invocation) -> Result<()> {
        let record = Record::of(invocation)?;
        self.write(record)
    }

    /// [`save`](Self::save)s what [`Record::of`] encoded (so that the encoding can happen
    /// outside a blocking thread).
    pub fn write(&self, Record { id, record, row }: Record) -> Result<()> {
        // One writer at a time; the index is locked only to plan and to apply, never across
        // the commit, so that readers (the list, `contains`) do not wait for the disk.
        let _writer = self.writer.lock();
        let id = id.as_str();
        let (entry, evict) = self.plan(id, record.len() as u64, row);
        let row = serde_json::to_vec(&entry).map_err(json_error)?;
        (|| -> std::result::Result<(), redb::Error> {
            let txn = self.db.begin_write()?;
            {
                let mut records = txn.open_table(INVOCATIONS)?;
                let mut rows = txn.open_table(ROWS)?;
                records.insert(id, record.as_slice())?;
                rows.insert(id, row.as_slice())?;
                for old in &evict {
                    records.remove(old.as_str())?;
                    rows.remove(old.as_str())?;
                }
            }
            txn.commit()?;
            Ok(())
        })()
        .map_err(db_error("writing an invocation"))?;
        let mut index = self.index.lock();
        for old in evict {
            if let Some(e) = index.entries.remove(&old) {
                index.by_order.remove(&e.order);
                index.bytes -= e.bytes;
            }
        }
        if entry.order == index.next {
            index.next += 1;
            index.by_order.insert(entry.order, id.to_string());
        }
        index.bytes += entry.bytes;
        if let Some(before) = index.entries.insert(id.to_string(), entry) {
            index.bytes -= before.bytes;
        }
        Ok(())
    }

    /// The entry of `id`'s new record of `bytes`, and the oldest others to evict so that the
    /// store stays within its limits.
    fn plan(&self, id: &str, bytes: u64, row: Row) -> (Entry, Vec<String>) {
        let index = self.index.lock();
        let order = index.entries.get(id).map_or(index.next, |e| e.order);
        let before = index.entries.get(id).map_or(0, |e| e.bytes);
        let mut count = index.entries.len() + usize::from(!index.entries.contains_key(id));
        let mut total = index.bytes - before + bytes;
        let mut evict = Vec::new();
        for other in index.by_order.values() {
            if count <= self.limits.max_invocations && total <= self.limits.max_bytes {
                break;
            }
            if other == id {
                continue;
            }
            total -= index.entries.get(other).map_or(0, |e| e.bytes);
            count -= 1;
            evict.push(other.clone());
        }
        (Entry { order, bytes, row }, evict)
    }

    /// The newest `limit` invocations' rows, newest first.
    pub fn rows(&self, limit: usize) -> Vec<Row> {
        let index = self.index.lock();
        index
            .by_order
            .values()
            .rev()
            .take(limit)
            .filter_map(|id| index.entries.get(id).map(|e| e.row.clone()))
            .collect()
    }

    /// Invocations held, and the bytes of their records.
    pub fn usage(&self) -> (usize, u64) {
        let index = self.index.lock();
        (index.entries.len(), index.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(id: &str, padding: usize) -> Invocation {
        let mut inv = Invocation::new(id, "b");
        inv.output = "x".repeat(padding);
        inv
    }

    #[test]
    fn keeps_within_its_count_and_bytes_evicting_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.redb");
        // Room for three small ones, by count and by bytes.
        let small = Record::of(&invocation("inv-0", 10)).unwrap().bytes() as u64;
        let limits = Limits {
            max_invocations: 3,
            max_bytes: 3 * small + 30,
        };
        let store = InvocationStore::open(&path, limits).unwrap();
        for i in 0..5 {
            store.save(&invocation(&format!("inv-{i}"), 10)).unwrap();
        }
        let ids: Vec<String> = store.rows(10).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["inv-4", "inv-3", "inv-2"]);
        // Rewriting an old one keeps its place in the order.
        store.save(&invocation("inv-2", 20)).unwrap();
        // One twice the size: it and one small one fit.
        store.save(&invocation("inv-5", small as usize)).unwrap();
        let ids: Vec<String> = store.rows(10).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["inv-5", "inv-4"], "bytes evict too");
        assert!(store.usage().1 <= limits.max_bytes);
        assert!(store.load("inv-0").unwrap().is_none());
        drop(store);
        // What was committed is there after reopening, in the same order.
        let store = InvocationStore::open(&path, limits).unwrap();
        let ids: Vec<String> = store.rows(10).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["inv-5", "inv-4"]);
        assert_eq!(
            store.load("inv-5").unwrap().unwrap().output.len(),
            small as usize
        );
        store.save(&invocation("inv-6", 10)).unwrap();
        assert_eq!(store.rows(1)[0].id, "inv-6");
    }

    #[test]
    fn unreadable_rows_are_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.redb");
        let limits = Limits {
            max_invocations: 3,
            max_bytes: 1 << 20,
        };
        let store = InvocationStore::open(&path, limits).unwrap();
        store.save(&invocation("good", 10)).unwrap();
        let txn = store.db.begin_write().unwrap();
        {
            let mut rows = txn.open_table(ROWS).unwrap();
            let mut records = txn.open_table(INVOCATIONS).unwrap();
            rows.insert("bad", b"{not json".as_slice()).unwrap();
            records.insert("bad", b"{}".as_slice()).unwrap();
        }
        txn.commit().unwrap();
        drop(store);
        let store = InvocationStore::open(&path, limits).unwrap();
        assert_eq!(store.usage().0, 1);
        assert!(store.load("bad").unwrap().is_none(), "its record went too");
        assert!(store.load("good").unwrap().is_some());
    }

    #[test]
    fn a_garbage_file_is_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.redb");
        std::fs::write(&path, b"not a database at all, just bytes").unwrap();
        let limits = Limits {
            max_invocations: 3,
            max_bytes: 10_000,
        };
        assert!(InvocationStore::open(&path, limits).is_err());
    }
}
