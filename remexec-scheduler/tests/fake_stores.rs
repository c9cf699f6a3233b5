//! The in-memory `MapStore` and `MapCache` that the scheduler tests use pass the conformance
//! suites of the traits they fake, so that the scheduler tests run against contract-abiding
//! storage.

mod support;

use std::sync::Arc;

use support::{MapCache, MapStore};

#[tokio::test]
async fn map_store_conformance() {
    remexec_core::testing::blob_store_conformance(Arc::new(MapStore::default())).await;
}

#[tokio::test]
async fn map_cache_conformance() {
    remexec_core::testing::action_cache_conformance(Arc::new(MapCache::default())).await;
}
