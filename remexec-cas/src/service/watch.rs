//! `Cluster/Watch` on a worker's CAS port: what it holds, then every change, in batches.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use remexec_core::{BlobChange, Digest, Error, ListBlobs};
use remexec_proto::cluster::v1::{BlobSet, WatchResponse};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tonic::Status;

/// Blobs per response.
const BATCH: usize = 10_000;

/// The stream a `Watch` call gets.
pub(crate) type WatchStream = futures::stream::BoxStream<'static, Result<WatchResponse, Status>>;

/// Groups `(instance, digest)` pairs into [`BlobSet`]s.
fn sets(blobs: impl IntoIterator<Item = (String, Digest)>) -> Vec<BlobSet> {
    let mut by: BTreeMap<(String, i32), Vec<_>> = BTreeMap::new();
    for (instance, digest) in blobs {
        let key = (instance, digest.function().to_proto());
        by.entry(key).or_default().push(digest.to_proto());
    }
    by.into_iter()
        .map(|((instance_name, digest_function), digests)| BlobSet {
            instance_name,
            digest_function,
            digests,
        })
        .collect()
}

/// The snapshot of `local` in responses of [`BATCH`] blobs, the last one `synced`, then its
/// changes as they come (every change already waiting goes into one response). A follower
/// that lags behind the store's queue gets `UNAVAILABLE`.
pub(crate) fn watch(local: &Arc<dyn ListBlobs>) -> Result<WatchStream, Status> {
    // Subscribed before the snapshot is listed, so that no change falls between them.
    let changes = local
        .changes()
        .ok_or_else(|| Error::Unimplemented("this store publishes no changes".into()))?;
    let blobs = local.blobs();
    let mut snapshot: Vec<WatchResponse> = blobs
        .chunks(BATCH)
        .map(|chunk| WatchResponse {
            added: sets(chunk.iter().cloned()),
            ..Default::default()
        })
        .collect();
    match snapshot.last_mut() {
        Some(last) => last.synced = true,
        None => snapshot.push(WatchResponse {
            synced: true,
            ..Default::default()
        }),
    }
    let follow = futures::stream::unfold(changes, |mut changes| async move {
        let first = match changes.recv().await {
            Ok(change) => change,
            Err(RecvError::Closed) => return None,
            Err(RecvError::Lagged(n)) => {
                return Some((Err(lagged(n)), changes));
            }
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match changes.try_recv() {
                Ok(change) => batch.push(change),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                Err(TryRecvError::Lagged(n)) => {
                    return Some((Err(lagged(n)), changes));
                }
            }
        }
        Some((Ok(response(batch)), changes))
    });
    // An error ends the stream.
    let follow = follow.scan(false, |failed, item| {
        let out = (!*failed).then_some(item);
        *failed = out.as_ref().is_some_and(Result::is_err);
        futures::future::ready(out)
    });
    Ok(futures::stream::iter(snapshot.into_iter().map(Ok))
        .chain(follow)
        .boxed())
}

/// What a follower `n` changes behind gets: the end of its watch, to start again.
fn lagged(n: u64) -> Status {
    Error::Unavailable(format!("fell {n} changes behind; watch again").into()).into()
}

/// One response for `batch`, in which each blob's last change stands for its others (a blob
/// evicted and stored again is stored), so that the order within the response is no matter.
fn response(batch: Vec<BlobChange>) -> WatchResponse {
    let mut last: std::collections::HashMap<(String, Digest), bool> = Default::default();
    for change in batch {
        last.insert((change.instance, change.digest), change.present);
    }
    let batch = last
        .into_iter()
        .map(|((instance, digest), present)| BlobChange {
            instance,
            digest,
            present,
        });
    let (added, removed): (Vec<_>, Vec<_>) = batch.partition(|c| c.present);
    let pairs = |list: Vec<BlobChange>| list.into_iter().map(|c| (c.instance, c.digest));
    WatchResponse {
        added: sets(pairs(added)),
        removed: sets(pairs(removed)),
        synced: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remexec_core::DigestFunction;

    /// A blob evicted and stored again within one batch is sent as stored, once; one dropped
    /// after being stored, as dropped.
    #[test]
    fn each_blob_s_last_change_in_a_batch_stands() {
        let (x, y) = (
            DigestFunction::Sha256.digest_of(b"x"),
            DigestFunction::Sha256.digest_of(b"y"),
        );
        let change = |digest, present| BlobChange {
            instance: "i".into(),
            digest,
            present,
        };
        let batch = vec![
            change(x, false),
            change(y, true),
            change(x, true),
            change(y, false),
        ];
        let r = response(batch);
        let digests =
            |sets: &[BlobSet]| -> Vec<_> { sets.iter().flat_map(|s| s.digests.clone()).collect() };
        assert_eq!(digests(&r.added), vec![x.to_proto()]);
        assert_eq!(digests(&r.removed), vec![y.to_proto()]);
    }
}
