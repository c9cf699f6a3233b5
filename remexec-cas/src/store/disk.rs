//! [`DiskStore`]: blobs as files on local disk.
//!
//! - Each blob is written to a temporary file, fsynced (unless `sync` is off), then renamed into
//!   place, so a half-written blob is never visible, even after a crash. Small blobs
//!   ([`DiskStoreOptions::pack_up_to`]) are appended to segment files instead, and acknowledged
//!   once a sync shared by every write that came meanwhile has made them durable; a torn one
//!   fails its checksum at start and is skipped.
//! - An in-memory index, rebuilt by scanning the directory at start, answers lookups without
//!   touching the disk and evicts least recently used blobs beyond the byte budget.
//! - Concurrent writers of the same digest each write their own temporary file; the renames are
//!   atomic, so readers see one complete copy.
//! - Blobs stream through in chunks; none is held whole in memory.
//! - A referenced blob ([`BlobStore::reference`]) is kept from eviction for
//!   [`keep_referenced`](DiskStoreOptions::keep_referenced) after its last reference, across
//!   restarts; a write that would need one evicted fails with `ResourceExhausted`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use remexec_core::{BlobStore, ChunkStream, Digest, Error, ListBlobs, ReadRange, Result};
use tokio::io::AsyncSeekExt;

use crate::files::{FileTable, Opened};
use crate::key::Key;

/// Size of the chunks a read yields.
const READ_CHUNK: usize = 1024 * 1024;

/// Options for [`DiskStore::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStoreOptions {
    /// Most bytes of blob content kept; older blobs are evicted beyond it.
    pub budget: u64,
    /// fsync each blob and its directory before acknowledging it (on by default). Turning it off
    /// keeps crash safety against process kills but not against power loss.
    pub sync: bool,
    /// How long a referenced blob is kept after its last reference (3 hours by default; zero
    /// keeps nothing). Clients may count on it: it is the value for Bazel's
    /// `--experimental_remote_cache_ttl`. Whole seconds; references within a minute of each
    /// other renew a keep once.
    pub keep_referenced: std::time::Duration,
    /// A directory whose files count against the budget too (none by default): a worker's
    /// file cache and action directories, so that its budget covers every byte it holds.
    /// Measured every [`SHARE_EVERY`], a hard-linked file once; see
    /// [`DiskStore::share_budget_with`].
    pub share_with: Option<std::path::PathBuf>,
    /// Blobs of at most this many bytes are packed into segment files, many to a file and
    /// many writers to one `fdatasync` ([`PACK_UP_TO`] by default; 0 packs none). Blobs
    /// packed before stay readable when it is lowered.
    pub pack_up_to: u64,
}

/// The default of [`DiskStoreOptions::pack_up_to`]: 64 KiB, which takes in most of a build's
/// blobs (Actions, Commands, Directories, sources, small objects).
pub const PACK_UP_TO: u64 = 64 * 1024;

/// How often [`DiskStoreOptions::share_with`] is measured.
pub const SHARE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The default of [`DiskStoreOptions::keep_referenced`]: 3 hours.
pub const KEEP_REFERENCED: std::time::Duration = std::time::Duration::from_secs(3 * 3600);

impl Default for DiskStoreOptions {
    fn default() -> Self {
        Self {
            budget: 10 << 30,
            sync: true,
            keep_referenced: KEEP_REFERENCED,
            share_with: None,
            pack_up_to: PACK_UP_TO,
        }
    }
}

/// A [`BlobStore`] on local disk. See the module docs for its guarantees.
#[derive(Debug, Clone)]
pub struct DiskStore {
    files: Arc<FileTable>,
}

fn length_matches(key: &Key, len: u64) -> bool {
    key.digest.size() == len
}

impl DiskStore {
    /// Opens the store rooted at `root`, creating it if needed and re-indexing what is there.
    pub async fn open(root: impl AsRef<Path>, options: DiskStoreOptions) -> Result<Self> {
        let table = crate::files::TableOptions {
            budget: options.budget,
            sync: options.sync,
            keep_secs: options.keep_referenced.as_secs(),
            pack_up_to: options.pack_up_to,
        };
        let files = FileTable::open(root.as_ref(), table, length_matches).await?;
        let store = Self { files };
        if let Some(dir) = options.share_with {
            store.share_budget_with(dir, SHARE_EVERY);
        }
        Ok(store)
    }

    /// Every blob stored now, with its instance name. Blobs of an instance whose name was
    /// never recorded (stored by a remexec before 0.2) are left out.
    pub fn blobs(&self) -> Vec<(String, Digest)> {
        let mut names = std::collections::HashMap::new();
        self.files
            .keys()
            .into_iter()
            .filter_map(|key| {
                let name = names
                    .entry(key.ns)
                    .or_insert_with(|| self.files.instance(key.ns))
                    .clone()?;
                Some((name, key.digest))
            })
            .collect()
    }

    /// The digests of `digests` not stored, each one stored marked used (and referenced, with
    /// `reference`).
    fn lookup(&self, instance: &str, digests: &[Digest], reference: bool) -> Vec<Digest> {
        let ns = crate::key::namespace(instance);
        self.files.with_index(reference, |present| {
            digests
                .iter()
                .filter(|d| !present(&Key { ns, digest: **d }))
                .copied()
                .collect()
        })
    }

    /// Counts the files under `dir` against this store's budget, measured every `every` (a
    /// hard-linked file once), as long as the store lives: the store keeps for itself what
    /// they leave, evicting to fit. A worker's file cache and action directories are counted
    /// so, so that its disk budget covers every byte it holds.
    pub fn share_budget_with(
        &self,
        dir: std::path::PathBuf,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let files = Arc::downgrade(&self.files);
        tokio::spawn(async move {
            loop {
                let Some(files) = files.upgrade() else { return };
                let dir = dir.clone();
                let measured = remexec_core::fs::blocking(move || {
                    files.reserve(disk_bytes(&dir));
                    Ok(())
                });
                let _ = measured.await;
                tokio::time::sleep(every).await;
            }
        })
    }

    /// `(bytes, blobs)` currently stored.
    pub fn usage(&self) -> (u64, usize) {
        self.files.usage()
    }
}

/// The bytes of the regular files under `dir`, each file once however many links it has;
/// what cannot be read counts nothing.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if meta.is_file() && (meta.nlink() < 2 || seen.insert((meta.dev(), meta.ino())))
            {
                total += meta.len();
            }
        }
    }
    total
}

impl ListBlobs for DiskStore {
    fn blobs(&self) -> Vec<(String, Digest)> {
        DiskStore::blobs(self)
    }

    fn totals(&self) -> (u64, usize) {
        DiskStore::usage(self)
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<remexec_core::BlobChange>> {
        Some(self.files.changes())
    }

    fn referenced(&self, instance: &str, digest: &Digest) -> bool {
        self.files.kept(&Key::new(instance, *digest))
    }
}

#[async_trait]
impl BlobStore for DiskStore {
    async fn find_missing(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        Ok(self.lookup(instance, digests, false))
    }

    async fn reference(&self, instance: &str, digests: &[Digest]) -> Result<Vec<Digest>> {
        Ok(self.lookup(instance, digests, true))
    }

    async fn put(&self, instance: &str, digest: Digest, data: ChunkStream) -> Result<()> {
        let key = Key::new(instance, digest);
        if self.files.touch(&key) {
            return Ok(());
        }
        let budget = self.files.budget();
        if digest.size() > budget {
            return Err(Error::ResourceExhausted(
                format!("blob {digest} is larger than the disk store's {budget}-byte budget")
                    .into(),
            ));
        }
        // Refused before the upload is read, when referenced blobs leave no room; checked
        // again when it is stored.
        self.files.check_room(&key, digest.size())?;
        if self.files.instance(key.ns).is_none() {
            let files = Arc::clone(&self.files);
            let name = instance.to_string();
            remexec_core::fs::blocking(move || files.remember_instance(key.ns, &name)).await?;
        }
        self.files.write(key, data, Some(digest.size())).await
    }

    async fn get(
        &self,
        instance: &str,
        digest: Digest,
        range: ReadRange,
    ) -> Result<Option<ChunkStream>> {
        let key = Key::new(instance, digest);
        let (mut file, len) = match self.files.open_read(&key, length_matches).await? {
            None => return Ok(None),
            Some(Opened::File(file, len)) => (file, len),
            Some(Opened::Packed(content)) => {
                let (offset, take) = range.resolve(content.len() as u64)?;
                let part = content.slice(offset as usize..(offset + take) as usize);
                return Ok(Some(futures::stream::once(async { Ok(part) }).boxed()));
            }
        };
        let (offset, take) = range.resolve(len)?;
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(|e| Error::io("seeking a blob", e))?;
        }
        Ok(Some(read_chunks(file.into_std().await, take)))
    }
    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Disk({})", self.files)
    }
    fn usage(&self) -> Option<remexec_core::metrics::StoreUsage> {
        Some(self.files.store_usage())
    }
}

/// `take` bytes of `file` from where it stands, as chunks of up to [`READ_CHUNK`], each read
/// on the blocking pool straight into the buffer it is sent in (`tokio::fs` would read into
/// a buffer of its own and copy). A file shorter than `take` ends the stream with an error.
fn read_chunks(file: std::fs::File, take: u64) -> ChunkStream {
    futures::stream::try_unfold((file, take), |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = left.min(READ_CHUNK as u64);
        let (file, chunk) = remexec_core::fs::blocking(move || {
            use std::io::Read as _;
            let mut chunk = Vec::with_capacity(want as usize);
            (&mut file)
                .take(want)
                .read_to_end(&mut chunk)
                .map_err(|e| Error::io("reading a blob", e))?;
            if chunk.len() as u64 != want {
                return Err(Error::Internal("a blob's file ended early".into()));
            }
            Ok((file, chunk))
        })
        .await?;
        Ok(Some((bytes::Bytes::from(chunk), (file, left - want))))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use remexec_core::testing::{blob_store_conformance, chunked, content};
    use remexec_core::{BlobStoreExt, DigestFunction};

    /// Options with every blob in a file of its own, whose times these tests look at (the
    /// packed store's are in `files::tests`).
    fn opts(budget: u64) -> DiskStoreOptions {
        DiskStoreOptions {
            budget,
            pack_up_to: 0,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn conformance() {
        for pack_up_to in [0, PACK_UP_TO] {
            let dir = tempfile::tempdir().unwrap();
            let options = DiskStoreOptions {
                pack_up_to,
                ..opts(1 << 30)
            };
            let store = DiskStore::open(dir.path(), options).await.unwrap();
            blob_store_conformance(Arc::new(store)).await;
        }
    }

    /// Four blobs of 1,000 bytes, from seeds `first..first + 4`, with their digests.
    fn four_blobs(first: u64) -> (Vec<bytes::Bytes>, Vec<Digest>) {
        let blobs: Vec<_> = (first..first + 4).map(|i| content(i, 1000)).collect();
        let digests = blobs
            .iter()
            .map(|b| DigestFunction::Sha256.digest_of(b))
            .collect();
        (blobs, digests)
    }

    #[tokio::test]
    async fn survives_restart_and_evicts_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let (blobs, digests) = four_blobs(0);
        {
            let store = DiskStore::open(dir.path(), opts(10_000)).await.unwrap();
            for (b, d) in blobs.iter().zip(&digests) {
                store
                    .put("inst", *d, chunked(b.clone(), 300))
                    .await
                    .unwrap();
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        // Leftover temp files from a crash are cleared at start.
        std::fs::write(dir.path().join("tmp").join("up-partial"), b"half").unwrap();
        // Stray files where directories belong are skipped, not fatal.
        std::fs::write(
            dir.path()
                .join(format!("{:032x}", crate::key::namespace("inst")))
                .join("stray"),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.path().join("README"), b"x").unwrap();
        let store = DiskStore::open(dir.path(), opts(10_000)).await.unwrap();
        assert_eq!(store.usage(), (4000, 4));
        assert!(
            store
                .find_missing("inst", &digests)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        for (b, d) in blobs.iter().zip(&digests) {
            assert_eq!(
                store
                    .get_bytes("inst", *d, u64::MAX)
                    .await
                    .unwrap()
                    .as_deref(),
                Some(&b[..])
            );
        }
        drop(store);
        // Re-opening with a smaller budget evicts the oldest blobs first.
        let store = DiskStore::open(dir.path(), opts(2_500)).await.unwrap();
        assert_eq!(
            store.find_missing("inst", &digests).await.unwrap(),
            digests[..2].to_vec()
        );
        // And further puts evict least recently used.
        store.get_bytes("inst", digests[2], u64::MAX).await.unwrap();
        let extra = content(99, 1000);
        let ed = DigestFunction::Sha256.digest_of(&extra);
        store.put_bytes("inst", ed, extra).await.unwrap();
        assert_eq!(
            store
                .find_missing("inst", &[digests[2], digests[3], ed])
                .await
                .unwrap(),
            vec![digests[3]]
        );
        assert!(store.usage().0 <= 2_500);
    }

    /// The file of `digest` under `root`, found by name.
    fn file_of(root: &std::path::Path, digest: Digest) -> std::path::PathBuf {
        let name = format!("{}-{}", digest.hash_hex(), digest.size());
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                if entry.file_name().to_str() == Some(name.as_str()) {
                    return entry.path();
                }
                if entry.file_type().unwrap().is_dir() {
                    dirs.push(entry.path());
                }
            }
        }
        panic!("no file for {digest}");
    }

    fn mtime(path: &std::path::Path) -> std::time::SystemTime {
        std::fs::metadata(path).unwrap().modified().unwrap()
    }

    /// Reads and FindMissingBlobs count as uses across a restart: the files' mtimes record
    /// them, so the order the index is rebuilt in, and so what a smaller budget evicts first,
    /// is the order of last use, not of writing.
    #[tokio::test]
    async fn the_order_of_use_survives_a_restart() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let (blobs, digests) = four_blobs(10);
        {
            let store = DiskStore::open(dir.path(), opts(10_000)).await.unwrap();
            for (b, d) in blobs.iter().zip(&digests) {
                store.put_bytes("inst", *d, b.clone()).await.unwrap();
            }
        }
        // Written an hour ago, in order: 0 is the oldest.
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for (i, d) in digests.iter().enumerate() {
            let file = std::fs::File::open(file_of(dir.path(), *d)).unwrap();
            let times = std::fs::FileTimes::new()
                .set_modified(hour_ago + Duration::from_secs(10 * i as u64));
            file.set_times(times).unwrap();
        }
        let store = DiskStore::open(dir.path(), opts(10_000)).await.unwrap();
        // 0 is read, 1 is asked about; 2 and 3 are left alone.
        store.get_bytes("inst", digests[0], u64::MAX).await.unwrap();
        assert!(
            store
                .find_missing("inst", &digests[1..2])
                .await
                .unwrap()
                .is_empty()
        );
        let recent = SystemTime::now() - Duration::from_secs(60);
        for d in &digests[..2] {
            let path = file_of(dir.path(), *d);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while mtime(&path) < recent {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{d}: use not recorded"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for d in &digests[2..] {
            assert!(
                mtime(&file_of(dir.path(), *d)) < recent,
                "{d}: recorded unused"
            );
        }
        drop(store);
        // Room for two: the two used survive, though written first.
        let store = DiskStore::open(dir.path(), opts(2_500)).await.unwrap();
        assert_eq!(
            store.find_missing("inst", &digests).await.unwrap(),
            digests[2..].to_vec()
        );
    }

    #[tokio::test]
    async fn damaged_files_are_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let data = content(5, 500);
        let d = DigestFunction::Sha256.digest_of(&data);
        let store = DiskStore::open(dir.path(), opts(1 << 20)).await.unwrap();
        store.put_bytes("", d, data).await.unwrap();
        let path = store.files.path(&Key::new("", d));
        std::fs::write(&path, b"truncated").unwrap();
        assert!(store.get("", d, ReadRange::ALL).await.unwrap().is_none());
        drop(store);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"truncated").unwrap();
        let store = DiskStore::open(dir.path(), opts(1 << 20)).await.unwrap();
        assert_eq!(store.find_missing("", &[d]).await.unwrap(), vec![d]);
        assert!(!path.exists());
    }

    fn set_atime(path: &std::path::Path, t: std::time::SystemTime) {
        let file = std::fs::File::open(path).unwrap();
        file.set_times(std::fs::FileTimes::new().set_accessed(t))
            .unwrap();
    }

    fn atime(path: &std::path::Path) -> std::time::SystemTime {
        std::fs::metadata(path).unwrap().accessed().unwrap()
    }

    /// Referenced blobs are passed over by eviction; once they fill the budget a write is
    /// refused, counted, and nothing referenced is lost.
    #[tokio::test]
    async fn referenced_blobs_are_kept_and_a_full_store_refuses_writes() {
        use std::time::SystemTime;
        let dir = tempfile::tempdir().unwrap();
        let (blobs, digests) = four_blobs(20);
        let store = DiskStore::open(dir.path(), opts(3_000)).await.unwrap();
        for (b, d) in blobs.iter().zip(&digests).take(2) {
            store.put_bytes("inst", *d, b.clone()).await.unwrap();
        }
        // A fresh write is not referenced: its atime is the epoch.
        let first = file_of(dir.path(), digests[0]);
        assert_eq!(atime(&first), SystemTime::UNIX_EPOCH);
        // 0 is referenced (and an absent blob is reported missing), 1 is only looked at.
        let absent = DigestFunction::Sha256.digest_of(b"absent");
        assert_eq!(
            store
                .reference("inst", &[digests[0], absent])
                .await
                .unwrap(),
            vec![absent]
        );
        assert!(
            store
                .find_missing("inst", &digests[1..2])
                .await
                .unwrap()
                .is_empty()
        );
        // 0 is the least recently used, but 1 and then 2 go for 3 and the next.
        for (b, d) in blobs.iter().zip(&digests).skip(2) {
            store.put_bytes("inst", *d, b.clone()).await.unwrap();
        }
        assert_eq!(
            store.find_missing("inst", &digests).await.unwrap(),
            vec![digests[1]]
        );
        // Referencing 2 and 3 fills the budget: a write is refused, whole or streamed.
        store.reference("inst", &digests[2..]).await.unwrap();
        let usage = store.files.store_usage();
        assert_eq!((usage.referenced_bytes, usage.refused_writes), (3_000, 0));
        let extra = content(98, 10);
        let ed = DigestFunction::Sha256.digest_of(&extra);
        let err = store
            .put_bytes("inst", ed, extra.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        assert!(
            err.to_string().contains("referenced blobs fill the store"),
            "{err}"
        );
        assert_eq!(store.files.store_usage().refused_writes, 1);
        // A blob already held is still accepted (nothing to store).
        store
            .put_bytes("inst", digests[2], blobs[2].clone())
            .await
            .unwrap();
        assert!(
            store
                .find_missing("inst", &digests[2..])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .find_missing("inst", &digests[..1])
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// Referenced blobs filling the budget, with the references recorded on disk.
    async fn full_of_references(dir: &std::path::Path) -> (Vec<Digest>, bytes::Bytes, Digest) {
        use std::time::{Duration, SystemTime};
        let (blobs, digests) = four_blobs(20);
        let store = DiskStore::open(dir, opts(3_000)).await.unwrap();
        for (b, d) in blobs.iter().zip(&digests).skip(1) {
            store.put_bytes("inst", *d, b.clone()).await.unwrap();
        }
        store.reference("inst", &digests[1..]).await.unwrap();
        let extra = content(98, 10);
        let ed = DigestFunction::Sha256.digest_of(&extra);
        assert!(store.put_bytes("inst", ed, extra.clone()).await.is_err());
        // The references reach the files' atimes, by the recorder thread.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while atime(&file_of(dir, digests[3])) == SystemTime::UNIX_EPOCH {
            assert!(
                std::time::Instant::now() < deadline,
                "reference not recorded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (digests, extra, ed)
    }

    /// The keeps are on disk: after a restart a store full of references is still full, but
    /// a reference older than the keep time keeps nothing; with no keep time, none do.
    #[tokio::test]
    async fn keeps_survive_a_restart_and_end_after_the_keep_time() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let (digests, extra, ed) = full_of_references(dir.path()).await;
        let hours_ago = SystemTime::now() - KEEP_REFERENCED - Duration::from_secs(120);
        set_atime(&file_of(dir.path(), digests[1]), hours_ago);
        let store = DiskStore::open(dir.path(), opts(3_000)).await.unwrap();
        assert_eq!(store.files.store_usage().referenced_bytes, 2_000);
        store.put_bytes("inst", ed, extra).await.unwrap();
        assert_eq!(
            store.find_missing("inst", &digests).await.unwrap(),
            digests[..2].to_vec()
        );
        drop(store);
        // With no keep time, nothing is kept: the references recorded do not count.
        let keepless = DiskStoreOptions {
            keep_referenced: Duration::ZERO,
            ..opts(3_000)
        };
        let store = DiskStore::open(dir.path(), keepless).await.unwrap();
        assert_eq!(store.files.store_usage().referenced_bytes, 0);
        store.reference("inst", &digests[2..]).await.unwrap();
        let big = content(97, 2_500);
        let bd = DigestFunction::Sha256.digest_of(&big);
        store.put_bytes("inst", bd, big).await.unwrap();
        assert_eq!(
            store.find_missing("inst", &digests[2..]).await.unwrap(),
            digests[2..].to_vec()
        );
    }

    /// Files beside the store count against its budget, a hard-linked one once: the store
    /// evicts to keep within what they leave, never a referenced blob.
    #[tokio::test]
    async fn files_beside_the_store_count_against_its_budget() {
        let (dir, beside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (blobs, digests) = four_blobs(30);
        let store = DiskStore::open(dir.path(), opts(4_000)).await.unwrap();
        for (b, d) in blobs.iter().zip(&digests) {
            store.put_bytes("inst", *d, b.clone()).await.unwrap();
        }
        store.reference("inst", &digests[..1]).await.unwrap();
        std::fs::create_dir(beside.path().join("actions")).unwrap();
        let file = beside.path().join("cached");
        std::fs::write(&file, vec![0u8; 1_000]).unwrap();
        std::fs::hard_link(&file, beside.path().join("actions/input")).unwrap();
        let task = store.share_budget_with(
            beside.path().to_path_buf(),
            std::time::Duration::from_millis(10),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.files.budget() == 4_000 {
            assert!(std::time::Instant::now() < deadline, "{:?}", store.usage());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // 1,000 bytes set aside (the link is the same file): the referenced blob stayed, the
        // least recently used other went.
        assert_eq!(store.files.budget(), 3_000);
        assert_eq!(store.usage(), (3_000, 3));
        assert_eq!(
            store.find_missing("inst", &digests).await.unwrap(),
            digests[1..2].to_vec()
        );
        // The files gone, the budget is the store's again.
        std::fs::remove_file(&file).unwrap();
        std::fs::remove_file(beside.path().join("actions/input")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.files.budget() < 3_000 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        task.abort();
    }

    #[tokio::test]
    async fn rejects_blob_over_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), opts(100)).await.unwrap();
        let data = content(1, 200);
        let err = store
            .put_bytes("", DigestFunction::Sha256.digest_of(&data), data)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }
}
