//! Staging: every path of the layout, refused tree bombs, and a runtime that never blocks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use remexec_core::merkle::TreeLimits;
use remexec_core::reapi::Directory;
use remexec_core::{Digest, Error};

use super::mem_cas::{F, MemCas, file, subdir, symlink};
use crate::{FileCache, stage_inputs};

async fn stage(cas: &MemCas, root: Digest, dest: &std::path::Path) -> remexec_core::Result<u64> {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = FileCache::open(cache_dir.path(), 1 << 30).unwrap();
    let staged = stage_inputs(cas, &cache, "", root, dest, TreeLimits::default()).await?;
    Ok(staged.entries)
}

#[tokio::test]
async fn staging_counts_files_bytes_and_cache_hits() {
    let cas = MemCas::default();
    let (x, y) = (cas.add("shared content"), cas.add("other"));
    let package = cas.add_dir(&Directory {
        files: vec![file("x", x), file("y", y)],
        ..Default::default()
    });
    let root = cas.add_dir(&Directory {
        directories: vec![subdir("a", package), subdir("b", package)],
        files: vec![file("z", x)],
        ..Default::default()
    });
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = FileCache::open(cache_dir.path(), 1 << 30).unwrap();
    let limits = TreeLimits::default();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cold = stage_inputs(&cas, &cache, "", root, first.path(), limits)
        .await
        .unwrap();
    // Two distinct files (x at three paths, y at two), none cached: all fetched.
    let bytes = x.size() + y.size();
    assert_eq!(cold.entries, 7);
    assert_eq!((cold.files, cold.bytes, cold.cache_hits), (2, bytes, 0));
    assert_eq!(cold.fetched_bytes, bytes);
    // The same tree again: every file a hit, nothing fetched.
    let warm = stage_inputs(&cas, &cache, "", root, second.path(), limits)
        .await
        .unwrap();
    assert_eq!((warm.files, warm.bytes, warm.cache_hits), (2, bytes, 2));
    assert_eq!(warm.fetched_bytes, 0);
}

#[tokio::test]
async fn a_directory_at_several_paths_is_staged_at_each() {
    let cas = MemCas::default();
    let x = cas.add("same content");
    let package = cas.add_dir(&Directory {
        files: vec![file("x", x)],
        ..Default::default()
    });
    let empty = cas.add_dir(&Directory::default());
    let root = cas.add_dir(&Directory {
        directories: vec![
            subdir("a", package),
            subdir("b", package),
            subdir("e1", empty),
            subdir("e2", empty),
        ],
        symlinks: vec![symlink("l", "a/x")],
        ..Default::default()
    });
    let dest = tempfile::tempdir().unwrap();
    assert_eq!(stage(&cas, root, dest.path()).await.unwrap(), 7);
    for p in ["a/x", "b/x", "l"] {
        assert_eq!(
            std::fs::read_to_string(dest.path().join(p)).unwrap(),
            "same content",
            "{p}"
        );
    }
    for p in ["e1", "e2"] {
        assert!(dest.path().join(p).is_dir(), "{p} missing");
    }
}

#[tokio::test]
async fn missing_directories_are_a_failed_precondition() {
    let cas = MemCas::default();
    let absent = F.digest_of(b"not a directory in the CAS");
    let root = cas.add_dir(&Directory {
        directories: vec![subdir("a", absent)],
        ..Default::default()
    });
    let dest = tempfile::tempdir().unwrap();
    let err = stage(&cas, root, dest.path()).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
}

#[tokio::test]
async fn a_tree_bomb_is_refused_before_anything_is_created() {
    let cas = MemCas::default();
    let leaf = cas.add("leaf");
    // Each level holds the next one twice: 2^25 paths from 26 distinct directories.
    let mut level = cas.add_dir(&Directory {
        files: vec![file("f", leaf)],
        ..Default::default()
    });
    for _ in 0..25 {
        level = cas.add_dir(&Directory {
            directories: vec![subdir("a", level), subdir("b", level)],
            ..Default::default()
        });
    }
    let dest = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let err = stage(&cas, level, dest.path()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
}

/// A tree of about 18,000 entries, most of them paths of shared directories.
fn big_tree(cas: &MemCas) -> Digest {
    let contents: Vec<Digest> = (0..100).map(|i| cas.add(format!("file {i}"))).collect();
    let empty = cas.add_dir(&Directory::default());
    let packages: Vec<Digest> = (0..10)
        .map(|k| {
            cas.add_dir(&Directory {
                files: (0..100)
                    .map(|j| file(&format!("f{j:03}"), contents[(k * 7 + j) % 100]))
                    .collect(),
                directories: (0..20)
                    .map(|j| subdir(&format!("e{j:02}"), empty))
                    .collect(),
                ..Default::default()
            })
        })
        .collect();
    cas.add_dir(&Directory {
        directories: (0..150)
            .map(|i| subdir(&format!("p{i:03}"), packages[i % 10]))
            .collect(),
        ..Default::default()
    })
}

#[test]
fn staging_never_blocks_the_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cas = Arc::new(MemCas::default());
    let root = big_tree(&cas);
    let dest = tempfile::tempdir().unwrap();
    let (staged, max_gap, took) = rt.block_on(async {
        let done = tokio_util::sync::CancellationToken::new();
        let ticker = {
            let done = done.clone();
            tokio::spawn(async move {
                let mut max_gap = Duration::ZERO;
                let mut last = Instant::now();
                while !done.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    max_gap = max_gap.max(last.elapsed());
                    last = Instant::now();
                }
                max_gap
            })
        };
        // Let the ticker start.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let start = Instant::now();
        let staged = stage(&cas, root, dest.path()).await.unwrap();
        let took = start.elapsed();
        done.cancel();
        (staged, ticker.await.unwrap(), took)
    });
    assert_eq!(staged, 150 * 121);
    assert!(dest.path().join("p149/f099").is_file());
    eprintln!("staged {staged} entries in {took:?}; largest gap between ticks {max_gap:?}");
    assert!(
        max_gap < Duration::from_millis(250),
        "the runtime was blocked for {max_gap:?}"
    );
}
