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
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
