//! Compiles the vendored .proto files of Envoy's rate-limit service into the encoded descriptor set that server reflection answers from (see `src/reflection.rs`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::Compiler::new(["proto"])
        .and_then(|mut compiler| {
            compiler
                .include_imports(true)
                .include_source_info(false)
                .open_file("envoy/service/ratelimit/v3/rls.proto")?;
            Ok(compiler.encode_file_descriptor_set())
        })
        .unwrap_or_else(|error| panic!("compiling proto/ for reflection: {error:?}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("rls_descriptor_set.bin"), descriptors)
        .expect("writing the descriptor set to OUT_DIR");
}
