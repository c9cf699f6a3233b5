//! The Capabilities service: advertises exactly what this server does.

use remexec_core::{Compressor, DigestFunction};
use remexec_proto::build::bazel::semver::SemVer;
use remexec_proto::reapi::capabilities_server::Capabilities;
use remexec_proto::reapi::{
    ActionCacheUpdateCapabilities, CacheCapabilities, ExecutionCapabilities,
    GetCapabilitiesRequest, ServerCapabilities, digest_function, symlink_absolute_path_strategy,
};
use tonic::{Request, Response, Status};

use super::Limits;

/// Lowest REAPI version served: v2.0 clients (output_files/output_directories) work.
pub const LOW_API_VERSION: (i32, i32) = (2, 0);
/// Highest REAPI version served: v2.3 brought the `digest_function` request fields and the
/// function segment in resource names, which this server implements.
pub const HIGH_API_VERSION: (i32, i32) = (2, 3);

fn semver((major, minor): (i32, i32)) -> SemVer {
    SemVer {
        major,
        minor,
        patch: 0,
        prerelease: String::new(),
    }
}

/// The Capabilities service. Build it with [`CacheServices::capabilities`](super::CacheServices::capabilities).
#[derive(Debug, Clone)]
pub struct CapabilitiesService {
    limits: Limits,
    execution: Option<ExecutionCapabilities>,
}

impl CapabilitiesService {
    /// A cache-only server's capabilities.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            execution: None,
        }
    }

    /// Also advertises execution, for servers that mount an Execution service.
    pub fn with_execution(mut self, execution: ExecutionCapabilities) -> Self {
        self.execution = Some(execution);
        self
    }

    /// The capabilities message this service answers with.
    pub fn capabilities(&self) -> ServerCapabilities {
        let compressors = vec![Compressor::Zstd.to_proto()];
        ServerCapabilities {
            cache_capabilities: Some(CacheCapabilities {
                digest_functions: DigestFunction::ALL.iter().map(|f| f.to_proto()).collect(),
                action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                cache_priority_capabilities: None,
                max_batch_total_size_bytes: self.limits.max_batch_total_size as i64,
                symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Allowed
                    as i32,
                supported_compressors: compressors.clone(),
                supported_batch_update_compressors: compressors,
                ..Default::default()
            }),
            execution_capabilities: Some(self.execution.clone().unwrap_or(ExecutionCapabilities {
                digest_function: digest_function::Value::Sha256 as i32,
                exec_enabled: false,
                digest_functions: DigestFunction::ALL.iter().map(|f| f.to_proto()).collect(),
                ..Default::default()
            })),
            deprecated_api_version: None,
            low_api_version: Some(semver(LOW_API_VERSION)),
            high_api_version: Some(semver(HIGH_API_VERSION)),
        }
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        remexec_core::validate_instance_name(&request.get_ref().instance_name)
            .map_err(Status::from)?;
        Ok(Response::new(self.capabilities()))
    }
}
