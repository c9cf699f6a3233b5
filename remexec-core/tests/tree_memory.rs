//! Hostile trees at reduced scale: walking them costs memory and time in proportion to their
//! distinct directories, never to the paths they would have when laid out.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use remexec_core::merkle::{TreeLimits, TreeWalker, encode_message, fetch_tree};
use remexec_core::reapi::{Directory, DirectoryNode, FileNode};
use remexec_core::testing::MapStore;
use remexec_core::{Digest, DigestFunction};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Serialises the tests of this file: allocations of any of them count in the heap profile.
static SERIAL: Mutex<()> = Mutex::new(());

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn store_dir(store: &MapStore, dir: &Directory) -> Digest {
    let (digest, bytes) = encode_message(DigestFunction::Sha256, dir);
    store.insert("", bytes);
    digest
}

/// 60 levels, each directory holding the next one under four names plus a file with a long
/// name: 4^60 paths laid out, 61 distinct directories.
fn tree_bomb(store: &MapStore) -> Digest {
    let file = DigestFunction::Sha256.digest_of(b"x");
    let mut dir = store_dir(store, &Directory::default());
    for _ in 0..60 {
        let parent = Directory {
            files: vec![FileNode {
                name: "f".repeat(200),
                digest: Some(file.to_proto()),
                ..Default::default()
            }],
            directories: ["a", "b", "c", "d"]
                .iter()
                .map(|n| DirectoryNode {
                    name: n.repeat(200),
                    digest: Some(dir.to_proto()),
                })
                .collect(),
            ..Default::default()
        };
        dir = store_dir(store, &parent);
    }
    dir
}

#[test]
fn tree_bombs_cost_memory_per_distinct_directory() {
    block_on(tree_bombs());
}

async fn tree_bombs() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let store = std::sync::Arc::new(MapStore::default());
    let root = tree_bomb(&store);
    let before = dhat::HeapStats::get().curr_bytes;

    let tree = fetch_tree(store.as_ref(), "", root).await.unwrap();
    assert_eq!(tree.directories.len(), 61);
    let err = tree.check_limits(TreeLimits::default()).unwrap_err();
    assert!(err.to_string().contains("entries"), "{err}");
    let unlimited = TreeLimits {
        max_entries: u64::MAX,
        max_depth: u64::MAX,
    };
    // Saturates rather than overflowing; the depth is the real one.
    assert_eq!(tree.check_limits(unlimited).unwrap(), u64::MAX);
    let shallow = TreeLimits {
        max_entries: u64::MAX,
        max_depth: 59,
    };
    assert!(
        tree.check_limits(shallow)
            .unwrap_err()
            .to_string()
            .contains("60 directories deep")
    );
    drop(tree);

    let mut walker = TreeWalker::new(store.clone(), "", root);
    let mut seen = 0;
    loop {
        let page = walker.next_page(7, 1 << 20).await.unwrap();
        if page.is_empty() {
            break;
        }
        seen += page.len();
    }
    assert_eq!(seen, 61);

    let stats = dhat::HeapStats::get();
    let peak = stats.max_bytes.saturating_sub(before);
    // 61 directories of about 1 KiB each: far below a megabyte, where laying the tree out would
    // need more memory than exists.
    assert!(peak < 1 << 20, "peak {peak} bytes above the stored blobs");
}
