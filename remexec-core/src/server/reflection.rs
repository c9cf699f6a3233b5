//! gRPC server reflection, so that tools such as `grpcurl` can list and describe a node's
//! services without local `.proto` files:
//!
//! ```text
//! grpcurl -plaintext 127.0.0.1:8980 list
//! grpcurl -plaintext 127.0.0.1:8980 describe build.bazel.remote.execution.v2.Execution
//! ```
//!
//! The caller gives the descriptor sets of its services (remexec's are
//! `remexec_proto::FILE_DESCRIPTOR_SET`: REAPI v2, ByteStream, longrunning, remexec's own
//! protocols and their imports); `grpc.health.v1` and both reflection versions are always
//! described. Both protocol versions are offered: `grpc.reflection.v1` and the older
//! `grpc.reflection.v1alpha`, which many clients still try first or only.

use tonic_reflection::server::{Builder, v1, v1alpha};

use crate::{Error, Result};

/// Both reflection services (`grpc.reflection.v1.ServerReflection` and
/// `grpc.reflection.v1alpha.ServerReflection`), each describing the types of `sets` and
/// advertising every service they name.
///
/// Mount both on a port, e.g. `routes.add_service(v1).add_service(v1alpha)`. For a port that
/// serves only some of these, use [`services_for`] so that `list` tells the truth.
///
/// # Errors
///
/// [`Error::Internal`] if a descriptor set does not decode.
pub fn services(
    sets: &[&'static [u8]],
) -> Result<(
    v1::ServerReflectionServer<impl v1::ServerReflection>,
    v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
)> {
    build(sets, |builder| builder)
}

/// Like [`services`], but `ListServices` answers only `names` (fully qualified service names,
/// e.g. `<ExecutionServer<_> as tonic::server::NamedService>::NAME`). Every type in the
/// descriptors can still be described.
///
/// # Errors
///
/// As for [`services`].
pub fn services_for(
    sets: &[&'static [u8]],
    names: &[&str],
) -> Result<(
    v1::ServerReflectionServer<impl v1::ServerReflection>,
    v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
)> {
    build(sets, |builder| {
        names
            .iter()
            .fold(builder, |builder, name| builder.with_service_name(*name))
    })
}

fn build(
    sets: &[&'static [u8]],
    configure: impl Fn(Builder<'static>) -> Builder<'static>,
) -> Result<(
    v1::ServerReflectionServer<impl v1::ServerReflection>,
    v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
)> {
    // Each reflection version describes only itself; registering both lets either describe both.
    let always: [&'static [u8]; 3] = [
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let base = || {
        configure(
            sets.iter()
                .chain(&always)
                .fold(Builder::configure(), |builder, set| {
                    builder.register_encoded_file_descriptor_set(set)
                }),
        )
    };
    let internal =
        |e: tonic_reflection::server::Error| Error::internal("reflection descriptors", e);
    let v1 = base().build_v1().map_err(internal)?;
    let v1alpha = base().build_v1alpha().map_err(internal)?;
    Ok((v1, v1alpha))
}
