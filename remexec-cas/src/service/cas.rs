//! The ContentAddressableStorage service.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use remexec_core::merkle::TreeWalker;
use remexec_core::{
    BlobStoreExt, Compressor, Digest, DigestFunction, Error, Result, ok_rpc_status,
};
use remexec_proto::reapi::content_addressable_storage_server::ContentAddressableStorage;
use remexec_proto::reapi::{
    BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, FindMissingBlobsRequest, FindMissingBlobsResponse,
    GetChunkMappingRequest, GetChunkMappingResponse, GetTreeRequest, GetTreeResponse,
    RegisterChunkMappingRequest, RegisterChunkMappingResponse, SpliceBlobRequest,
    SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse, batch_read_blobs_response,
    batch_update_blobs_response,
};
use tonic::{Request, Response, Status};

use super::compression::{compress_bytes, decompress_bytes};
use super::{CacheServices, request_scope, respond};

/// Byte size at which a GetTree page is closed even if it has fewer than `page_size` entries.
const TREE_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// The REAPI ContentAddressableStorage service. Build it with [`CacheServices::cas`].
#[derive(Debug, Clone)]
pub struct CasService {
    services: CacheServices,
}

fn parse_digests(
    function: DigestFunction,
    digests: &[remexec_proto::reapi::Digest],
) -> Result<Vec<Digest>> {
    digests
        .iter()
        .map(|d| Digest::from_proto(function, d))
        .collect()
}

impl CasService {
    pub(crate) fn new(services: CacheServices) -> Self {
        Self { services }
    }

    /// FindMissingBlobs: what was found is referenced, unless the caller only `peek`s.
    async fn find_missing(
        &self,
        req: FindMissingBlobsRequest,
        peek: bool,
    ) -> Result<FindMissingBlobsResponse> {
        let function = request_scope(&req.instance_name, req.digest_function)?;
        self.check_count(
            req.blob_digests.len(),
            self.services.limits.max_find_missing_digests,
            "FindMissingBlobs request",
            "max_find_missing_digests",
        )?;
        let parsed = parse_digests(function, &req.blob_digests)?;
        let (indices, digests): (Vec<usize>, Vec<Digest>) = parsed
            .into_iter()
            .enumerate()
            .filter(|(_, d)| !d.is_empty_blob())
            .unzip();
        let store = &self.services.store;
        let missing = match peek {
            true => store.find_missing(&req.instance_name, &digests).await?,
            false => store.reference(&req.instance_name, &digests).await?,
        };
        // `missing` is a subsequence of `digests` (stores keep input order): hand back the
        // request's own messages instead of formatting new ones.
        let mut protos = req.blob_digests;
        let mut out = Vec::with_capacity(missing.len());
        let mut candidates = digests.iter().zip(&indices);
        for m in &missing {
            if let Some((_, &i)) = candidates.by_ref().find(|(d, _)| *d == m) {
                out.push(std::mem::take(&mut protos[i]));
            }
        }
        Ok(FindMissingBlobsResponse {
            missing_blob_digests: out,
        })
    }

    fn check_count(&self, count: usize, limit: usize, what: &str, name: &str) -> Result<()> {
        if count > limit {
            return Err(Error::invalid(format!(
                "{what} has {count} digests, over the {name} limit of {limit}; split it"
            )));
        }
        Ok(())
    }

    fn check_batch_size(&self, total: u64, what: &str) -> Result<()> {
        let limit = self.services.limits.max_batch_total_size;
        if total > limit {
            return Err(Error::invalid(format!(
                "{what} totals {total} bytes, over the {limit}-byte max_batch_total_size_bytes; use ByteStream"
            )));
        }
        Ok(())
    }

    async fn batch_update(&self, req: BatchUpdateBlobsRequest) -> Result<BatchUpdateBlobsResponse> {
        let function = request_scope(&req.instance_name, req.digest_function)?;
        let limits = &self.services.limits;
        self.check_count(
            req.requests.len(),
            limits.max_batch_blobs,
            "BatchUpdateBlobs request",
            "max_batch_blobs",
        )?;
        let sent: u64 = req.requests.iter().map(|r| r.data.len() as u64).sum();
        let declared: u64 = req
            .requests
            .iter()
            .filter_map(|r| r.digest.as_ref())
            .map(|d| d.size_bytes.max(0) as u64)
            .fold(0u64, u64::saturating_add);
        self.check_batch_size(sent.max(declared), "BatchUpdateBlobs request")?;
        let instance = req.instance_name.as_str();
        let store = &self.services.store;
        let puts = req.requests.into_iter().map(|r| async move {
            let digest_proto = r.digest.clone();
            let outcome: Result<()> = async {
                let digest = Digest::from_field(function, r.digest.as_ref(), "digest")?;
                limits.check_blob_size(digest)?;
                let compressor = Compressor::from_proto(r.compressor)?;
                let data = decompress_bytes(compressor, Bytes::from(r.data), digest)?;
                if digest.is_empty_blob() {
                    return if data.is_empty() {
                        Ok(())
                    } else {
                        Err(Error::invalid("data given for the empty digest"))
                    };
                }
                store.put_bytes(instance, digest, data).await
            }
            .await;
            batch_update_blobs_response::Response {
                digest: digest_proto,
                status: Some(outcome.map_or_else(|e| e.to_rpc_status(), |()| ok_rpc_status())),
            }
        });
        let responses = futures::future::join_all(puts).await;
        Ok(BatchUpdateBlobsResponse { responses })
    }

    async fn batch_read(&self, req: BatchReadBlobsRequest) -> Result<BatchReadBlobsResponse> {
        let function = request_scope(&req.instance_name, req.digest_function)?;
        self.check_count(
            req.digests.len(),
            self.services.limits.max_batch_blobs,
            "BatchReadBlobs request",
            "max_batch_blobs",
        )?;
        let digests = parse_digests(function, &req.digests)?;
        self.check_batch_size(
            digests
                .iter()
                .map(Digest::size)
                .fold(0, u64::saturating_add),
            "BatchReadBlobs request",
        )?;
        let compressor = if req
            .acceptable_compressors
            .contains(&Compressor::Zstd.to_proto())
        {
            Compressor::Zstd
        } else {
            Compressor::Identity
        };
        let instance = req.instance_name.as_str();
        let store = &self.services.store;
        let reads = digests.into_iter().map(|digest| async move {
            let outcome: Result<Bytes> = async {
                if digest.is_empty_blob() {
                    return Ok(Bytes::new());
                }
                store
                    .get_bytes(instance, digest, u64::MAX)
                    .await?
                    .ok_or_else(|| {
                        Error::NotFound(format!("blob {digest} is not in the CAS").into())
                    })
            }
            .await;
            let (data, status, used) = match outcome
                .and_then(|data| Ok((compress_bytes(compressor, data)?, compressor)))
            {
                Ok((data, used)) => (data, ok_rpc_status(), used),
                Err(e) => (Bytes::new(), e.to_rpc_status(), Compressor::Identity),
            };
            batch_read_blobs_response::Response {
                digest: Some(digest.to_proto()),
                data: data.to_vec(),
                compressor: used.to_proto(),
                status: Some(status),
            }
        });
        Ok(BatchReadBlobsResponse {
            responses: futures::future::join_all(reads).await,
        })
    }

    async fn tree_pages(
        self,
        req: GetTreeRequest,
    ) -> Result<BoxStream<'static, Result<GetTreeResponse, Status>>> {
        let function = request_scope(&req.instance_name, req.digest_function)?;
        let root = Digest::from_field(function, req.root_digest.as_ref(), "root_digest")?;
        let max_page = self.services.limits.max_tree_page_size;
        let page_size = match req.page_size {
            n if n < 0 => return Err(Error::invalid(format!("page_size {n} is negative"))),
            0 => max_page,
            n => (n as usize).min(max_page),
        };
        let offset: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| {
                Error::invalid(format!(
                    "page_token {:?} was not issued by this server",
                    req.page_token
                ))
            })?
        };
        // One walk serves every page of this stream. A page token from an earlier call is the
        // number of directories already returned: resuming from it walks that far again.
        let mut walker = TreeWalker::new(
            std::sync::Arc::clone(&self.services.store),
            req.instance_name,
            root,
        );
        while walker.visited() < offset {
            let want = (offset - walker.visited()).min(max_page);
            if walker.next_page(want, usize::MAX).await?.is_empty() {
                return Err(Error::invalid(format!(
                    "page_token {:?} lies past the end of the tree",
                    req.page_token
                )));
            }
        }
        // Fetch the first page eagerly so that a missing or invalid root fails the call itself.
        let first = tree_page(&mut walker, page_size).await?;
        let stream = futures::stream::unfold(Some((Ok(first), walker)), move |state| async move {
            let (page, mut walker) = state?;
            let page = match page {
                Ok(page) => page,
                Err(e) => return Some((Err(Status::from(e)), None)),
            };
            let next = if page.next_page_token.is_empty() {
                None
            } else {
                let next = tree_page(&mut walker, page_size).await;
                Some((next, walker))
            };
            Some((Ok(page), next))
        });
        Ok(stream.boxed())
    }
}

/// The next GetTree page from `walker`: at most `page_size` directories and, beyond the first,
/// at most [`TREE_PAGE_BYTES`].
async fn tree_page(walker: &mut TreeWalker, page_size: usize) -> Result<GetTreeResponse> {
    let directories = walker.next_page(page_size, TREE_PAGE_BYTES).await?;
    let next_page_token = if walker.is_done() {
        String::new()
    } else {
        walker.visited().to_string()
    };
    Ok(GetTreeResponse {
        directories,
        next_page_token,
    })
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let peek = request
            .metadata()
            .contains_key(crate::store::grpc::PEEK_HEADER);
        respond(self.find_missing(request.into_inner(), peek).await)
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        respond(self.batch_update(request.into_inner()).await)
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        respond(self.batch_read(request.into_inner()).await)
    }

    type GetTreeStream = BoxStream<'static, Result<GetTreeResponse, Status>>;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        respond(self.clone().tree_pages(request.into_inner()).await)
    }

    async fn split_blob(
        &self,
        _: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        Err(
            Error::Unimplemented("SplitBlob is not supported (split_blob_support is false)".into())
                .into(),
        )
    }

    type GetChunkMappingStream = BoxStream<'static, Result<GetChunkMappingResponse, Status>>;

    async fn get_chunk_mapping(
        &self,
        _: Request<GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Error::Unimplemented("GetChunkMapping is not supported".into()).into())
    }

    async fn splice_blob(
        &self,
        _: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        Err(Error::Unimplemented("SpliceBlob is not supported".into()).into())
    }

    async fn register_chunk_mapping(
        &self,
        _: Request<tonic::Streaming<RegisterChunkMappingRequest>>,
    ) -> Result<Response<RegisterChunkMappingResponse>, Status> {
        Err(Error::Unimplemented("RegisterChunkMapping is not supported".into()).into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use remexec_core::BlobStore;
    use remexec_core::merkle::encode_message;
    use remexec_core::reapi::{Directory, DirectoryNode};

    use super::*;
    use crate::MemoryActionCache;
    use crate::store::CountingStore;

    async fn put_dir(store: &dyn BlobStore, dir: &Directory) -> Digest {
        let (digest, bytes) = encode_message(DigestFunction::Sha256, dir);
        store.put_bytes("", digest, bytes).await.unwrap();
        digest
    }

    fn node(name: String, digest: Digest) -> DirectoryNode {
        DirectoryNode {
            name,
            digest: Some(digest.to_proto()),
        }
    }

    async fn get_tree(service: &CasService, root: Digest, page_size: i32) -> Vec<GetTreeResponse> {
        let stream = service
            .clone()
            .tree_pages(GetTreeRequest {
                root_digest: Some(root.to_proto()),
                page_size,
                ..Default::default()
            })
            .await
            .unwrap();
        stream.map(|page| page.unwrap()).collect().await
    }

    #[tokio::test]
    async fn get_tree_walks_once_for_all_pages() {
        let store = Arc::new(CountingStore::new());
        // 2,000 distinct leaf directories under one root.
        let mut leaves = Vec::new();
        for i in 0..2000 {
            let leaf = Directory {
                directories: vec![],
                files: vec![],
                symlinks: vec![],
                node_properties: Some(remexec_core::reapi::NodeProperties {
                    properties: vec![remexec_core::reapi::NodeProperty {
                        name: "i".into(),
                        value: i.to_string(),
                    }],
                    ..Default::default()
                }),
            };
            leaves.push(node(
                format!("d{i:05}"),
                put_dir(store.as_ref(), &leaf).await,
            ));
        }
        let root = put_dir(
            store.as_ref(),
            &Directory {
                directories: leaves,
                ..Default::default()
            },
        )
        .await;
        let service = CasService::new(CacheServices::new(
            store.clone(),
            Arc::new(MemoryActionCache::new(1 << 20)),
        ));
        store.take_gets();
        let pages = get_tree(&service, root, 10).await;
        assert_eq!(pages.len(), 201);
        assert_eq!(
            pages.iter().map(|p| p.directories.len()).sum::<usize>(),
            2001
        );
        let fetches = store.take_gets();
        // Walking again from the root for every page would fetch about 200,000 directories.
        assert!(
            fetches <= 2001 + 201,
            "{fetches} fetches for 2,001 directories"
        );
    }

    #[tokio::test]
    async fn get_tree_of_a_tree_bomb_returns_each_directory_once() {
        let store = Arc::new(CountingStore::new());
        // 40 levels, each holding the next twice: 2^40 paths, 41 distinct directories.
        let mut dir = put_dir(store.as_ref(), &Directory::default()).await;
        for _ in 0..40 {
            let parent = Directory {
                directories: vec![node("a".into(), dir), node("b".into(), dir)],
                ..Default::default()
            };
            dir = put_dir(store.as_ref(), &parent).await;
        }
        let service = CasService::new(CacheServices::new(
            store.clone(),
            Arc::new(MemoryActionCache::new(1 << 20)),
        ));
        let pages = get_tree(&service, dir, 0).await;
        assert_eq!(pages.iter().map(|p| p.directories.len()).sum::<usize>(), 41);
        let tree = remexec_core::merkle::fetch_tree(store.as_ref(), "", dir)
            .await
            .unwrap();
        let err = tree
            .check_limits(remexec_core::merkle::TreeLimits::default())
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("entries"), "{err}");
    }
}
