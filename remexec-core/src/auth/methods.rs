//! The permission each gRPC method needs, and where its instance name is.

use std::fmt;

use super::Permission;

/// What a method requires of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// This permission on the instance the request names.
    Permission(Permission),
    /// Both permissions on the instance the request names (from one grant or two).
    Both(Permission, Permission),
    /// Any permission on the instance (capabilities).
    Any,
    /// Nothing: open to everyone (health checks).
    Nothing,
    /// Cluster membership (the worker API).
    Cluster,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Permission(p) => write!(f, "the {p} permission"),
            Self::Both(a, b) => write!(f, "the {a} and {b} permissions"),
            Self::Any => f.write_str("any permission"),
            Self::Nothing => f.write_str("nothing"),
            Self::Cluster => f.write_str("a cluster certificate"),
        }
    }
}

/// Where a request names its instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceFrom {
    /// Field 1 of the (first) request message is the REAPI `instance_name`.
    InstanceField,
    /// Field 1 of the (first) request message is a ByteStream resource name.
    ResourceField,
    /// The request names an operation, not an instance: the permission on any instance
    /// suffices (operation names are unguessable UUIDs).
    AnyInstance,
    /// The method has no instance.
    None,
}

/// The need and instance source of the gRPC method at `path` (`/package.Service/Method`).
/// Methods this table does not know need [`Permission::Admin`].
pub fn method_need(path: &str) -> (Need, InstanceFrom) {
    use InstanceFrom::{AnyInstance, InstanceField, None, ResourceField};
    use Permission::{Admin, BuildEvents, CacheRead, CacheWrite, Execute, Fetch};
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    let read = (Need::Permission(CacheRead), InstanceField);
    let write = (Need::Permission(CacheWrite), InstanceField);
    match (service, method) {
        ("build.bazel.remote.execution.v2.Capabilities", "GetCapabilities") => {
            (Need::Any, InstanceField)
        }
        ("build.bazel.remote.execution.v2.ActionCache", "GetActionResult") => read,
        ("build.bazel.remote.execution.v2.ActionCache", "UpdateActionResult") => write,
        (
            "build.bazel.remote.execution.v2.ContentAddressableStorage",
            "FindMissingBlobs" | "BatchReadBlobs" | "GetTree" | "SplitBlob",
        ) => read,
        (
            "build.bazel.remote.execution.v2.ContentAddressableStorage",
            "BatchUpdateBlobs" | "SpliceBlob",
        ) => write,
        ("google.bytestream.ByteStream", "Read") => (Need::Permission(CacheRead), ResourceField),
        ("google.bytestream.ByteStream", "Write" | "QueryWriteStatus") => {
            (Need::Permission(CacheWrite), ResourceField)
        }
        ("build.bazel.remote.execution.v2.Execution", "Execute") => {
            (Need::Permission(Execute), InstanceField)
        }
        ("build.bazel.remote.execution.v2.Execution", "WaitExecution") => {
            (Need::Permission(Execute), AnyInstance)
        }
        ("build.bazel.remote.asset.v1.Fetch", "FetchBlob" | "FetchDirectory") => {
            (Need::Both(CacheRead, Fetch), InstanceField)
        }
        ("build.bazel.remote.asset.v1.Push", "PushBlob" | "PushDirectory") => write,
        // Events name no instance: the permission on any instance suffices.
        (BUILD_EVENTS, "PublishLifecycleEvent" | "PublishBuildToolEventStream") => {
            (Need::Permission(BuildEvents), None)
        }
        ("google.longrunning.Operations", "ListOperations") => (Need::Permission(Admin), None),
        ("google.longrunning.Operations", _) => (Need::Permission(Execute), AnyInstance),
        ("remexec.worker.v1.WorkerService" | "remexec.cluster.v1.Peer", _) => (Need::Cluster, None),
        // Where blobs are, and the members: an operator's view.
        ("remexec.cluster.v1.Cluster", _) => (Need::Permission(Admin), None),
        ("grpc.health.v1.Health", _) => (Need::Nothing, None),
        // The API's shape, which is public: any authenticated caller may list it.
        (REFLECTION_V1 | REFLECTION_V1ALPHA, _) => (Need::Any, None),
        _ => (Need::Permission(Admin), None),
    }
}

const BUILD_EVENTS: &str = "google.devtools.build.v1.PublishBuildEvent";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Whether `path` (`/package.Service/Method`) names a service remexec serves. Metrics label
/// other paths `unknown`, so that clients cannot mint label values.
pub fn is_served(path: &str) -> bool {
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .map_or("", |(s, _)| s);
    matches!(
        service,
        "build.bazel.remote.execution.v2.Capabilities"
            | "build.bazel.remote.execution.v2.ActionCache"
            | "build.bazel.remote.execution.v2.ContentAddressableStorage"
            | "build.bazel.remote.execution.v2.Execution"
            | "google.bytestream.ByteStream"
            | "google.longrunning.Operations"
            | "build.bazel.remote.asset.v1.Fetch"
            | "build.bazel.remote.asset.v1.Push"
            | BUILD_EVENTS
            | "remexec.worker.v1.WorkerService"
            | "remexec.cluster.v1.Cluster"
            | "remexec.cluster.v1.Peer"
            | "grpc.health.v1.Health"
            | REFLECTION_V1
            | REFLECTION_V1ALPHA
    )
}
