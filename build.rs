//! Generates Hubble's Observer gRPC API (server and client) from the
//! vendored `proto/` with protox, a pure-Rust protobuf compiler: no
//! `protoc` on the build machine. The encoded descriptor set is kept for
//! prost-reflect at run time.

use std::path::PathBuf;

use prost::Message;

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["observer/observer.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("compiling proto/observer/observer.proto: {e:?}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("hubble_descriptor.bin"), fds.encode_to_vec())
        .expect("writing the descriptor set");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .generate_default_stubs(true)
        .compile_fds(fds)
        .expect("generating the Observer API");
}
