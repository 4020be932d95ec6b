//! Build steps:
//! - `sqlx::migrate!` embeds the migration folders at compile time; cargo must rebuild when a
//!   migration is added or changed (sqlx's documented recipe).
//! - The web portal's built files (`portal/dist`, produced by `npm run build` in `portal/`) are
//!   embedded in the binary: this writes a table of `include_bytes!` for them into `OUT_DIR`. When
//!   they are absent the table is empty and the server explains how to build them, so the Rust
//!   build never needs Node.js.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    // Read at run time: `env!` would be the path where this script was compiled, and cargo
    // reuses the compiled script for a checkout elsewhere that shares the target dir (a CI clone),
    // which then embedded the other checkout's page, or none.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dist = Path::new(&manifest_dir).join("../portal/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    collect(&dist, &mut files);
    files.sort();
    let mut table = String::from("&[\n");
    for file in &files {
        let Ok(relative) = file.strip_prefix(&dist) else {
            continue;
        };
        let url = format!(
            "/{}",
            relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/")
        );
        let absolute = file.canonicalize().unwrap_or_else(|_| file.clone());
        let _ = writeln!(
            table,
            "    ({url:?}, include_bytes!({:?}) as &[u8]),",
            absolute.display().to_string()
        );
    }
    table.push(']');
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("portal_assets.rs"), table).expect("write the portal asset table");
}

/// Every file under `dir`, recursively; nothing if it does not exist.
fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}
