//! Compiles the .proto files with protox (no system `protoc`) into one FileDescriptorSet,
//! imports included, with extension options such as `(enlace.class)` preserved, and generates
//! the tonic client and server of `personas.v1` from it (tonic-prost-build, no `protoc` either).

use std::path::PathBuf;

/// The files compiled into the set, relative to `proto/`.
const FILES: &[&str] = &["enlace/options.proto", "personas/v1/personas.proto"];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let include = manifest_dir.join("proto");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", include.display());
    for file in FILES {
        println!("cargo:rerun-if-changed={}", include.join(file).display());
    }

    let mut compiler = match protox::Compiler::new([&include]) {
        Ok(compiler) => compiler,
        Err(err) => panic!("cannot set up protox: {err}"),
    };
    compiler.include_imports(true).include_source_info(false);
    if let Err(err) = compiler.open_files(FILES) {
        panic!("cannot compile the .proto files: {err:?}");
    }
    // `encode_file_descriptor_set` keeps extension options, which `file_descriptor_set()`
    // (prost-types) would drop.
    let set = compiler.encode_file_descriptor_set();

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let out = out_dir.join("personas_descriptor_set.bin");
    if let Err(err) = std::fs::write(&out, set) {
        panic!("cannot write {}: {err}", out.display());
    }

    // The tonic messages, client and server of `personas.v1`, from the same compilation.
    // `.enlace` has no messages, only the `(enlace.class)` extension, which prost does not
    // generate code for; `.google.protobuf` maps to prost-types as usual.
    if let Err(err) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())
    {
        panic!("cannot generate the tonic code: {err}");
    }
}
