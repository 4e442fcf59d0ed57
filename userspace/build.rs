//! Builds the eBPF programs (ebpf/) with aya-build and leaves the object in
//! OUT_DIR, where `src/dataplane/loader.rs` embeds it.

use std::{env, path::PathBuf};

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("userspace/ has no parent directory"))?;
    let ebpf_dir = root.join("ebpf");

    // `cargo xtask setup` builds bpf-linker into the project-local .tools/
    // directory (against the nightly toolchain's own LLVM); put it on PATH so
    // a plain `cargo build` finds it too.
    let tools_bin = root.join(".tools/bin");
    println!(
        "cargo:rerun-if-changed={}",
        tools_bin.join("bpf-linker").display()
    );
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools_bin.clone()];
    paths.extend(env::split_paths(&path));
    let joined = env::join_paths(paths).context("PATH contains an invalid entry")?;
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("PATH", &joined) };

    let skip = env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true");
    if !skip && which("bpf-linker", &joined).is_none() {
        return Err(anyhow!(
            "bpf-linker not found in {} or PATH: run `cargo xtask setup` first \
             (it builds bpf-linker against the nightly toolchain's LLVM)",
            tools_bin.display()
        ));
    }

    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("ebpf/ path is not UTF-8"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gangplank-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (needs nightly + rust-src: `cargo xtask setup`)")
}

fn which(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
