//! Compiles `proto/terrace.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/terrace.proto");
    let descriptors = protox::compile(["proto/terrace.proto"], ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        // Keeps every message (and the `Message` enum) small: tier figures are large.
        .boxed(".terrace.v1.WorkerLoad.tiers")
        .boxed(".terrace.v1.TierStats.object_store")
        .compile_fds(descriptors)?;
    Ok(())
}
