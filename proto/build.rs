//! Compiles remexec's own .proto files with protox (no system protoc needed).

use std::path::{Path, PathBuf};

use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "protos/remexec/worker/v1/worker.proto",
        "protos/remexec/cluster/v1/cluster.proto",
        "protos/remexec/bytestream/bytestream.proto",
        "protos/remexec/asset/v1/asset.proto",
        "protos/remexec/usage/v1/usage.proto",
        "protos/remexec/build_event_stream/build_event_stream.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=protos");
    let fds = protox::compile(protos, ["protos"])?;
    tonic_prost_build::configure()
        .bytes(".google.bytestream")
        .extern_path(
            ".build.bazel.remote.execution.v2",
            "::bazel_remote_apis::build::bazel::remote::execution::v2",
        )
        .extern_path(".google.rpc", "::bazel_remote_apis::google::rpc")
        .compile_fds(fds)?;

    // The Build Event Service, from the vendored googleapis files (its messages carry Bazel's
    // events as `Any`; `build_event_stream.proto` above describes them).
    let bes = protox::compile(
        ["google/devtools/build/v1/publish_build_event.proto"],
        ["reflection"],
    )?;
    tonic_prost_build::configure()
        .extern_path(".google.api", "::prost_types")
        .compile_fds(bes)?;

    reflection_descriptor_set()?;
    Ok(())
}

/// The stub that `worker.proto` imports for its REAPI names.
const DIGEST_STUB: &str = "build/bazel/remote/execution/v2/digest.proto";

/// What the reflection descriptor set has under [`DIGEST_STUB`]'s name: a forward to the real
/// REAPI file, so that `worker.proto` refers to the real `Digest`, `Action`, `Command` and
/// `ActionResult` instead of the stubs (which only give names, not layouts).
const DIGEST_FORWARD: &str = "\
// Written by remexec-proto's build.rs for the reflection descriptor set only. worker.proto
// imports this name for its REAPI messages; the real ones live in remote_execution.proto.
syntax = \"proto3\";

import public \"build/bazel/remote/execution/v2/remote_execution.proto\";
";

/// Writes `$OUT_DIR/reflection_descriptor_set.bin`, the encoded `FileDescriptorSet` behind
/// `remexec_proto::FILE_DESCRIPTOR_SET`: the real (vendored) REAPI, ByteStream and longrunning
/// files from `reflection/`, remexec's worker protocol, and everything they import, with source
/// info (comments) and custom options such as `google.api.http`.
///
/// The stubs in `protos/` must never meet the real files: both declare the same packages. So
/// `protos/` is searched only under `remexec/`, `digest.proto` is answered by a forward to the
/// real file, and `google/rpc/status.proto` comes from `reflection/`. remexec's own
/// `remexec/bytestream/bytestream.proto` (package `google.bytestream`, wire-identical to the
/// real one) is left out: the real `google/bytestream/bytestream.proto` describes the service.
fn reflection_descriptor_set() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=reflection");
    let mut resolver = ChainFileResolver::new();
    resolver.add(DigestForward);
    resolver.add(IncludeFileResolver::new(PathBuf::from("reflection")));
    resolver.add(Under {
        prefix: "remexec/",
        inner: IncludeFileResolver::new(PathBuf::from("protos")),
    });
    resolver.add(GoogleFileResolver::new());

    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files([
        "build/bazel/remote/execution/v2/remote_execution.proto",
        "google/bytestream/bytestream.proto",
        "google/longrunning/operations.proto",
        "remexec/worker/v1/worker.proto",
        "remexec/cluster/v1/cluster.proto",
        "google/devtools/build/v1/publish_build_event.proto",
    ])?;
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    std::fs::write(
        out.join("reflection_descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    Ok(())
}

/// Answers [`DIGEST_STUB`] with [`DIGEST_FORWARD`].
struct DigestForward;

impl FileResolver for DigestForward {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == DIGEST_STUB {
            File::from_source(name, DIGEST_FORWARD)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// Delegates to `inner` only for file names under `prefix`.
struct Under<R> {
    prefix: &'static str,
    inner: R,
}

impl<R: FileResolver> FileResolver for Under<R> {
    fn resolve_path(&self, path: &Path) -> Option<String> {
        self.inner
            .resolve_path(path)
            .filter(|name| name.starts_with(self.prefix))
    }

    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name.starts_with(self.prefix) {
            self.inner.open_file(name)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}
