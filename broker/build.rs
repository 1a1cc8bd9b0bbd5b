//! Generates the gRPC code for `proto/riffle.proto` with a vendored `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .bytes(".riffle.v1")
        .compile_protos(&["proto/riffle.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/riffle.proto");
    Ok(())
}
