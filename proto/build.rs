//! Compiles the .proto files with protox (no system `protoc`) into one FileDescriptorSet,
//! imports included, with extension options such as `(enlace.class)` preserved.

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

    // Room for the tonic code generation to come: it will reuse `compiler.file_descriptor_set()`
    // with tonic-prost-build's `compile_fds`.
}
