fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build free of system packages.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure()
        .bytes(".locus.v1.DataChunk.data")
        .bytes(".locus.v1.ChunkPiece.data")
        .compile_protos(
            &["proto/locus/v1/local.proto", "proto/locus/v1/peer.proto"],
            &["proto"],
        )?;
    // The CSI spec's own csi.proto (v1.12.0, unchanged): the node plugin's Identity and Node
    // services. Its imports are protobuf's well-known types, which come with the vendored protoc.
    let wkt = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure()
        // Every service's client and server is generated; only Identity and Node are served.
        .compile_protos(
            &[std::path::PathBuf::from("proto/csi/v1/csi.proto")],
            &[std::path::PathBuf::from("proto"), wkt],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
