//! Store composition from one declarative tree, as Buildbarn's bb-storage builds its
//! `BlobAccess` from config: a [`StoreSpec`] for the CAS and a [`CacheSpec`] for the Action
//! Cache, each built by one function ([`StoreSpec::build`], [`CacheSpec::build`]) and printed
//! by `Display` exactly as the store it builds describes itself.
//!
//! Where hashing happens is part of the tree: only [`StoreSpec::Verifying`] hashes writes, so a
//! tree without it (a worker's own disk behind a port that already verifies) hashes nothing
//! twice.
//!
//! ```
//! # async fn demo(dir: &std::path::Path) -> remexec_core::Result<()> {
//! use remexec_cas::spec::{CacheSpec, StoreSpec};
//! let store = StoreSpec::Tiered {
//!     fast: Box::new(StoreSpec::Memory { budget: 64 << 20 }),
//!     slow: Box::new(StoreSpec::Disk { path: dir.join("cas"), options: Default::default() }),
//! };
//! let cache = CacheSpec::Completeness(Box::new(CacheSpec::Memory { budget: 16 << 20 }));
//! let blobs = store.build().await?;
//! assert_eq!(blobs.to_string(), store.to_string());
//! let results = cache.build(blobs).await?;
//! assert_eq!(results.to_string(), "CompletenessChecking(Memory(16 MiB))");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use remexec_core::client::ClientTls;
use remexec_core::metrics::Metrics;
use remexec_core::{ActionCache, BlobStore, Result};

use crate::external::ExternalSettings;
use crate::{
    CompletenessCheckingCache, DiskActionCache, DiskStore, DiskStoreOptions, GrpcActionCache,
    GrpcStore, MemoryActionCache, MemoryStore, TieredActionCache, TieredStore, VerifyingStore,
};

/// An upstream REAPI server, for [`StoreSpec::Grpc`] and [`CacheSpec::Grpc`].
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `grpc://host:port` or `grpcs://host:port`.
    pub url: String,
    /// TLS settings for `grpcs://` (a CA to trust, the name to expect).
    pub tls: ClientTls,
    /// The one instance name used upstream for every local one; `None` passes names through.
    pub instance: Option<String>,
    /// How the store describes itself: the URL without credentials.
    pub label: String,
}

/// An object store (`s3://`, `gs://`, `az://`, `file://`, `memory://`), for
/// [`StoreSpec::Object`] and [`CacheSpec::Object`].
#[derive(Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    /// The bucket and prefix.
    pub url: String,
    /// object_store's options (credentials among them: never printed).
    pub options: Vec<(String, String)>,
    /// Part sizes, timeouts and retries.
    pub settings: ExternalSettings,
}

/// Without credentials: the URL as stores describe themselves, option names without values.
impl fmt::Debug for ObjectSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.options.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ObjectSpec")
            .field("url", &crate::external::label_of(&self.url))
            .field("options", &names)
            .field("settings", &self.settings)
            .finish()
    }
}

/// Without credentials: the URL as the store describes itself.
impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.label)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl ObjectSpec {
    fn open(&self) -> Result<(Arc<dyn BlobStore>, Arc<dyn ActionCache>)> {
        crate::open_object_store(&self.url, self.options.clone(), self.settings.clone())
    }
}

/// The CAS, as a tree of stores.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// A [`DiskStore`]: files under `path`, opened with `options`.
    Disk {
        /// The directory.
        path: PathBuf,
        /// Its budget, fsync and keep time.
        options: DiskStoreOptions,
    },
    /// A [`MemoryStore`] of at most `budget` bytes.
    Memory {
        /// Bytes kept at most.
        budget: u64,
    },
    /// An [`ObjectBlobStore`](crate::ObjectBlobStore).
    Object(ObjectSpec),
    /// A [`GrpcStore`]: another REAPI server's CAS.
    Grpc(Upstream),
    /// A [`TieredStore`]: `fast` in front of `slow`, written through.
    Tiered {
        /// Read first, filled from `slow`.
        fast: Box<StoreSpec>,
        /// Every write reaches it before it is acknowledged.
        slow: Box<StoreSpec>,
    },
    /// A [`VerifyingStore`]: every write is hashed and checked against its digest before the
    /// inner store sees it.
    Verifying(Box<StoreSpec>),
    /// A [`MeteredStore`](crate::MeteredStore): the inner store's transfers counted in the
    /// metrics the tree is built with ([`StoreSpec::build_with`]).
    Metered(Box<StoreSpec>),
    /// A [`SmallBlobCache`](crate::SmallBlobCache): reads of blobs of up to
    /// [`SMALL_BLOB`](crate::store::small::SMALL_BLOB) bytes served from `budget` bytes of
    /// memory in front of `inner`.
    SmallBlobCache {
        /// Bytes of copies kept at most.
        budget: u64,
        /// The store read through.
        inner: Box<StoreSpec>,
    },
    /// A [`ReplicatedStore`](crate::ReplicatedStore) over the storage plane: each blob on
    /// `replicas` of the workers' CAS ports that `storage` resolves to
    /// ([`storage_membership`](crate::cluster::storage_membership)), reached with `tls`. It
    /// hashes nothing itself: the members' ports verify every write.
    Replicated {
        /// Copies kept of each blob, 1 to 3.
        replicas: u32,
        /// Seeds of the workers' CAS ports (URLs, or one DNS name for all).
        storage: Vec<String>,
        /// TLS for `grpcs://` members (the cluster certificate).
        tls: ClientTls,
    },
}

impl StoreSpec {
    /// Opens the tree (disk stores read their index, object stores only parse their URL); a
    /// [`Metered`](Self::Metered) store counts into a registry of its own.
    pub async fn build(&self) -> Result<Arc<dyn BlobStore>> {
        self.build_with(&Metrics::new()).await
    }

    /// [`build`](Self::build), [`Metered`](Self::Metered) stores counting into `metrics`, and
    /// a [`Replicated`](Self::Replicated) store's member count reported there.
    pub async fn build_with(&self, metrics: &Metrics) -> Result<Arc<dyn BlobStore>> {
        Ok(match self {
            Self::Disk { path, options } => Arc::new(DiskStore::open(path, options.clone()).await?),
            Self::Memory { budget } => Arc::new(MemoryStore::new(*budget)),
            Self::Object(object) => object.open()?.0,
            Self::Grpc(upstream) => {
                let channel =
                    remexec_core::client::connect_lazy_with(&upstream.url, &upstream.tls)?;
                Arc::new(
                    GrpcStore::new(channel)
                        .with_upstream_instance(upstream.instance.as_deref())
                        .with_label(upstream.label.clone()),
                )
            }
            Self::Tiered { fast, slow } => {
                let fast = Box::pin(fast.build_with(metrics)).await?;
                let slow = Box::pin(slow.build_with(metrics)).await?;
                Arc::new(TieredStore::new(fast, slow))
            }
            Self::Verifying(inner) => Arc::new(VerifyingStore::new(
                Box::pin(inner.build_with(metrics)).await?,
            )),
            Self::Metered(inner) => {
                let inner = Box::pin(inner.build_with(metrics)).await?;
                Arc::new(crate::MeteredStore::new(inner, metrics.clone()))
            }
            Self::SmallBlobCache { budget, inner } => Arc::new(crate::SmallBlobCache::new(
                Box::pin(inner.build_with(metrics)).await?,
                *budget,
                crate::store::small::SMALL_BLOB,
            )),
            Self::Replicated {
                replicas,
                storage,
                tls,
            } => {
                let members = crate::cluster::storage_membership(
                    storage.clone(),
                    *replicas,
                    tls.clone(),
                    None,
                )?;
                crate::cluster::scheduler_cas(*replicas, &members, tls.clone(), metrics)?.0
            }
        })
    }
}

/// Prints the tree as the built store describes itself, without credentials.
impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disk { path, options } => {
                write!(
                    f,
                    "Disk({}, {})",
                    path.display(),
                    crate::size(options.budget)
                )
            }
            Self::Memory { budget } => write!(f, "Memory({})", crate::size(*budget)),
            Self::Object(object) => write!(f, "Object({})", crate::external::label_of(&object.url)),
            Self::Grpc(upstream) => upstream.describe(f),
            Self::Tiered { fast, slow } => write!(f, "Tiered({fast}, {slow})"),
            Self::Verifying(inner) => write!(f, "Verifying({inner})"),
            Self::Metered(inner) => write!(f, "Metered({inner})"),
            Self::SmallBlobCache { budget, inner } => {
                write!(f, "SmallBlobCache({}, {inner})", crate::size(*budget))
            }
            Self::Replicated {
                replicas, storage, ..
            } => write!(f, "Replicated(R={replicas}, storage {storage:?})"),
        }
    }
}

impl Upstream {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.instance {
            None => write!(f, "Grpc({})", self.label),
            Some(name) => write!(f, "Grpc({}, instance {name:?})", self.label),
        }
    }
}

/// The Action Cache, as a tree of caches.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheSpec {
    /// A [`DiskActionCache`]: files under `path`, at most `budget` bytes.
    Disk {
        /// The directory.
        path: PathBuf,
        /// Bytes kept at most.
        budget: u64,
        /// Whether writes are fsynced before they are acknowledged.
        fsync: bool,
    },
    /// A [`MemoryActionCache`] of at most `budget` bytes.
    Memory {
        /// Bytes kept at most.
        budget: u64,
    },
    /// An [`ObjectActionCache`](crate::ObjectActionCache).
    Object(ObjectSpec),
    /// A [`GrpcActionCache`]: another REAPI server's Action Cache.
    Grpc(Upstream),
    /// A [`TieredActionCache`]: `fast` in front of `slow`, written through.
    Tiered {
        /// Read first, filled from `slow`.
        fast: Box<CacheSpec>,
        /// Every write reaches it.
        slow: Box<CacheSpec>,
    },
    /// A [`CompletenessCheckingCache`]: a result is a hit only while the CAS the cache is built
    /// against holds every blob it names.
    Completeness(Box<CacheSpec>),
}

impl CacheSpec {
    /// Opens the tree; completeness is checked against `store`.
    pub async fn build(&self, store: Arc<dyn BlobStore>) -> Result<Arc<dyn ActionCache>> {
        Ok(match self {
            Self::Disk {
                path,
                budget,
                fsync,
            } => Arc::new(DiskActionCache::open(path, *budget, *fsync).await?),
            Self::Memory { budget } => Arc::new(MemoryActionCache::new(*budget)),
            Self::Object(object) => object.open()?.1,
            Self::Grpc(upstream) => {
                let channel =
                    remexec_core::client::connect_lazy_with(&upstream.url, &upstream.tls)?;
                Arc::new(
                    GrpcActionCache::new(channel)
                        .with_upstream_instance(upstream.instance.as_deref())
                        .with_label(upstream.label.clone()),
                )
            }
            Self::Tiered { fast, slow } => {
                let fast = Box::pin(fast.build(Arc::clone(&store))).await?;
                let slow = Box::pin(slow.build(store)).await?;
                Arc::new(TieredActionCache::new(fast, slow))
            }
            Self::Completeness(inner) => {
                let inner = Box::pin(inner.build(Arc::clone(&store))).await?;
                Arc::new(CompletenessCheckingCache::new(inner, store))
            }
        })
    }
}

/// Prints the tree as the built cache describes itself, without credentials.
impl fmt::Display for CacheSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disk { path, budget, .. } => {
                write!(f, "Disk({}, {})", path.display(), crate::size(*budget))
            }
            Self::Memory { budget } => write!(f, "Memory({})", crate::size(*budget)),
            Self::Object(object) => write!(f, "Object({})", crate::external::label_of(&object.url)),
            Self::Grpc(upstream) => upstream.describe(f),
            Self::Tiered { fast, slow } => write!(f, "Tiered({fast}, {slow})"),
            Self::Completeness(inner) => write!(f, "CompletenessChecking({inner})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of node, nested: the spec prints exactly as the store it builds describes
    /// itself, and credentials in URLs are printed by neither.
    #[tokio::test]
    async fn specs_print_as_the_stores_they_build() {
        let dir = tempfile::tempdir().unwrap();
        let object = ObjectSpec {
            url: "memory://".into(),
            options: vec![("secret_access_key".into(), "SECRET".into())],
            settings: ExternalSettings::default(),
        };
        let upstream = Upstream {
            url: "grpc://127.0.0.1:1".into(),
            tls: ClientTls::default(),
            instance: Some("main".into()),
            label: "grpc://127.0.0.1:1".into(),
        };
        let store = StoreSpec::Verifying(Box::new(StoreSpec::Tiered {
            fast: Box::new(StoreSpec::Tiered {
                fast: Box::new(StoreSpec::Memory { budget: 1 << 20 }),
                slow: Box::new(StoreSpec::Disk {
                    path: dir.path().join("cas"),
                    options: DiskStoreOptions {
                        budget: 10 << 30,
                        sync: false,
                        ..Default::default()
                    },
                }),
            }),
            slow: Box::new(StoreSpec::Tiered {
                fast: Box::new(StoreSpec::Object(object.clone())),
                slow: Box::new(StoreSpec::Grpc(upstream.clone())),
            }),
        }));
        let built = store.build().await.unwrap();
        assert_eq!(built.to_string(), store.to_string());
        assert!(store.to_string().contains("Disk("), "{store}");
        let cache = CacheSpec::Completeness(Box::new(CacheSpec::Tiered {
            fast: Box::new(CacheSpec::Tiered {
                fast: Box::new(CacheSpec::Memory { budget: 1 << 20 }),
                slow: Box::new(CacheSpec::Disk {
                    path: dir.path().join("ac"),
                    budget: 1 << 30,
                    fsync: false,
                }),
            }),
            slow: Box::new(CacheSpec::Tiered {
                fast: Box::new(CacheSpec::Object(object)),
                slow: Box::new(CacheSpec::Grpc(upstream)),
            }),
        }));
        let built = cache.build(built).await.unwrap();
        assert_eq!(built.to_string(), cache.to_string());
        for text in [store.to_string(), cache.to_string()] {
            assert!(!text.contains("SECRET"), "{text}");
        }
        // Credentials in a URL and in options are printed by neither Display nor Debug.
        let secret = StoreSpec::Object(ObjectSpec {
            url: "s3://key:SECRET1@bucket/prefix?X-Amz-Signature=SECRET2".into(),
            options: vec![("secret_access_key".into(), "SECRET3".into())],
            settings: ExternalSettings::default(),
        });
        let upstream = CacheSpec::Grpc(Upstream {
            url: "grpcs://user:SECRET4@cache.example:443".into(),
            tls: ClientTls::default(),
            instance: None,
            label: "grpcs://cache.example:443".into(),
        });
        for text in [
            secret.to_string(),
            format!("{secret:?}"),
            upstream.to_string(),
            format!("{upstream:?}"),
        ] {
            assert!(!text.contains("SECRET"), "{text}");
        }
        assert_eq!(secret.to_string(), "Object(s3://bucket/prefix)");
    }

    /// A built tree is a working store: what goes into the fast tier of a tiered disk store is
    /// read back, and a verifying node refuses a blob that does not match its digest.
    #[tokio::test]
    async fn built_trees_store_and_verify() {
        use remexec_core::{BlobStoreExt, DigestFunction};
        let dir = tempfile::tempdir().unwrap();
        let store = StoreSpec::Verifying(Box::new(StoreSpec::Tiered {
            fast: Box::new(StoreSpec::Memory { budget: 1 << 20 }),
            slow: Box::new(StoreSpec::Disk {
                path: dir.path().join("cas"),
                options: DiskStoreOptions {
                    budget: 1 << 30,
                    sync: false,
                    ..Default::default()
                },
            }),
        }))
        .build()
        .await
        .unwrap();
        let f = DigestFunction::Sha256;
        let data = bytes::Bytes::from_static(b"spec");
        let digest = f.digest_of(&data);
        store.put_bytes("", digest, data.clone()).await.unwrap();
        assert_eq!(store.get_bytes("", digest, 100).await.unwrap(), Some(data));
        let wrong = f.digest_of(b"other");
        let err = store
            .put_bytes("", wrong, bytes::Bytes::from_static(b"spec!"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    }
}
