//! The disk store's put, get and find_missing paths.

#![allow(missing_docs)] // criterion's macros generate undocumented functions

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use remexec_cas::{DiskStore, DiskStoreOptions};
use remexec_core::testing::content;
use remexec_core::{BlobStore, BlobStoreExt, DigestFunction, ReadRange, collect_chunks};

fn disk(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = rt
        .block_on(DiskStore::open(
            dir.path(),
            DiskStoreOptions {
                budget: 64 << 30,
                sync: false,
                ..Default::default()
            },
        ))
        .expect("open");
    let mut group = c.benchmark_group("disk_store");
    for size in [64 * 1024usize, 1024 * 1024] {
        let template = content(size as u64, size);
        group.throughput(Throughput::Bytes(size as u64));
        let mut n = 0u64;
        group.bench_function(BenchmarkId::new("put (fsync off)", size), |b| {
            b.to_async(&rt).iter(|| {
                n += 1;
                let mut data = template.to_vec();
                data[..8].copy_from_slice(&n.to_le_bytes());
                let d = DigestFunction::Sha256.digest_of(&data);
                let store = &store;
                async move { store.put_bytes("", d, data.into()).await.expect("put") }
            })
        });
        let d = DigestFunction::Sha256.digest_of(&template);
        rt.block_on(store.put_bytes("", d, template.clone()))
            .expect("put");
        group.bench_function(BenchmarkId::new("get", size), |b| {
            b.to_async(&rt).iter(|| async {
                let stream = store
                    .get("", d, ReadRange::ALL)
                    .await
                    .expect("get")
                    .expect("present");
                collect_chunks(stream, d.size()).await.expect("read")
            })
        });
    }
    group.finish();
    let mut present = Vec::new();
    for i in 0..5_000u64 {
        let data = bytes::Bytes::copy_from_slice(&i.to_le_bytes());
        let d = DigestFunction::Sha256.digest_of(&data);
        rt.block_on(store.put_bytes("", d, data)).expect("put");
        present.push(d);
    }
    let query: Vec<_> = (0..10_000u64)
        .map(|i| {
            if i % 2 == 0 {
                present[(i / 2) as usize]
            } else {
                DigestFunction::Sha256.digest_of(&(i + (1 << 40)).to_le_bytes())
            }
        })
        .collect();
    c.bench_function("disk_store/find_missing 10000 digests", |b| {
        b.to_async(&rt).iter(|| store.find_missing("", &query))
    });
}

criterion_group!(benches, disk);
criterion_main!(benches);
