//! Compiles `chat.proto` and `cluster.proto` with protox (a pure-Rust protobuf compiler), so a
//! fresh machine needs no `protoc` install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=chat.proto");
    println!("cargo:rerun-if-changed=cluster.proto");
    let descriptors = protox::compile(["chat.proto", "cluster.proto"], ["."])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
