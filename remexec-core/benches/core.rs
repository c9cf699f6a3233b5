//! Hot paths of remexec-core: hashing, Merkle validation and tree scanning, and placement.

#![allow(missing_docs)] // criterion's macros generate undocumented functions

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use remexec_core::DigestFunction;
use remexec_core::merkle::{encode_message, tree_file_digests, validate_directory};
use remexec_core::reapi::{Directory, DirectoryNode, FileNode, Tree};

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash");
    for size in [64 * 1024, 4 * 1024 * 1024] {
        let data = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        for f in DigestFunction::ALL {
            group.bench_with_input(BenchmarkId::new(f.name(), size), &data, |b, data| {
                b.iter(|| f.digest_of(data))
            });
        }
    }
    group.finish();
}

fn directory(files: usize, dirs: usize) -> Directory {
    let f = DigestFunction::Sha256;
    Directory {
        files: (0..files)
            .map(|i| FileNode {
                name: format!("file{i:06}"),
                digest: Some(f.digest_of(&i.to_le_bytes()).to_proto()),
                ..Default::default()
            })
            .collect(),
        directories: (0..dirs)
            .map(|i| DirectoryNode {
                name: format!("dir{i:06}"),
                digest: Some(f.digest_of(&(i + files).to_le_bytes()).to_proto()),
            })
            .collect(),
        ..Default::default()
    }
}

fn merkle(c: &mut Criterion) {
    let f = DigestFunction::Sha256;
    let dir = directory(1000, 100);
    c.bench_function("merkle/validate_directory 1000 files + 100 dirs", |b| {
        b.iter(|| validate_directory(f, &dir))
    });
    c.bench_function("merkle/encode_message 1000 files + 100 dirs", |b| {
        b.iter(|| encode_message(f, &dir))
    });
    let tree = Tree {
        root: Some(directory(10, 100)),
        children: (0..100).map(|_| directory(100, 0)).collect(),
    };
    c.bench_function("merkle/tree_file_digests 100 dirs x 100 files", |b| {
        b.iter(|| tree_file_digests(f, &tree))
    });
}

/// Choosing a blob's 2 replicas among N members (rendezvous hashing is linear in N).
fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement");
    let digest = DigestFunction::Sha256.digest_of(b"placed");
    for members in [3, 100, 1000] {
        let placement =
            remexec_core::placement::Placement::new((0..members).map(|i| format!("worker-{i}")));
        group.bench_with_input(
            BenchmarkId::new("replicas_2", members),
            &placement,
            |b, p| b.iter(|| p.replicas(&digest, 2)),
        );
    }
    group.finish();
}

criterion_group!(benches, hashing, merkle, placement);
criterion_main!(benches);
