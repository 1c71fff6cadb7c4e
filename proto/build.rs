//! Compiles `switchboard/v1/*.proto` with protox (pure Rust, no system
//! `protoc`) and keeps the encoded descriptor set for server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["switchboard/v1/switchboard.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("switchboard_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
