//! Build script shared by the crates that link libtorch (see `package.build` in their Cargo.toml).
//!
//! - Embeds an rpath to `$LIBTORCH/lib` so binaries, tests and benches run without
//!   `LD_LIBRARY_PATH` (LIBTORCH is set by `.cargo/config.toml`, prepared by `scripts/setup.sh`).
//! - With the `cuda` feature, forces `libtorch_cuda` to be linked even though no symbol of it is
//!   referenced directly (otherwise the linker drops it and CUDA is never registered).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set: run scripts/setup.sh (it prepares libtorch and .cargo/config.toml points at it)"
        );
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    if !lib.join("libtorch_cpu.so").exists() {
        println!(
            "cargo:warning=libtorch not found at {}: run scripts/setup.sh",
            lib.display()
        );
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
