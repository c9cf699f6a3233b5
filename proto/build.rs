//! Compiles remexec's own .proto files with protox (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "protos/remexec/worker/v1/worker.proto",
        "protos/remexec/bytestream/bytestream.proto",
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
    Ok(())
}
