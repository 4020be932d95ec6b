//! Compiles every `.proto` under the repository's `proto/` folder with protox (pure Rust, so no
//! system `protoc` is needed), generates prost messages and tonic clients/servers, and writes the
//! encoded file descriptor set (with its imports) for server reflection and contract tests.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = Vec::new();
    collect_protos(&proto_root, &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptor_set = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("platform_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptor_set),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Methods a service does not implement yet answer UNIMPLEMENTED instead of failing the
        // build, so services can land method by method.
        .generate_default_stubs(true)
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL (see `codec` in lib.rs).
        .codec_path("crate::codec::ProstCodec")
        .compile_fds(descriptor_set)?;
    Ok(())
}

fn collect_protos(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect_protos(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    Ok(())
}
