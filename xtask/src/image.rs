//! `cargo xtask image`: the OCI image of `Containerfile`, built with
//! buildah: `gangplank` and `gangplank-ingress` as static binaries
//! (x86_64-unknown-linux-musl) on an empty base. No registry is needed (or
//! reachable here): nothing is pulled.
//!
//! Then it checks what it built: the binaries are static (no program
//! interpreter), the image holds exactly those two files, and both run
//! (`--version`) from the image's filesystem, mounted with `buildah mount`.
//! The image stays in buildah's local storage as `localhost/gangplank:<v>`
//! and is written to `target/image/gangplank-<v>.oci.tar` (an OCI
//! archive, for `skopeo copy` or `podman load`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::{cargo, root_dir, run};

const TARGET: &str = "x86_64-unknown-linux-musl";
const BINARIES: [&str; 2] = ["gangplank", "gangplank-ingress"];

/// Where the image goes, and whether it stays in local storage.
pub struct Options {
    /// Remove the image from buildah's storage once checked (the test run
    /// leaves nothing behind but the archive).
    pub keep: bool,
}

/// Builds, exports and checks the image; returns the archive's path.
pub fn image(opts: &Options) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let tag = format!("localhost/gangplank:{version}");
    eprintln!("xtask: building the static binaries ({TARGET}, release)");
    // ring's and mimalloc's C code need a musl C compiler (musl-tools).
    run(cargo()
        .args(["build", "--release", "--target", TARGET])
        .args(BINARIES.iter().flat_map(|b| ["-p", b]))
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc"))?;
    let bin_dir = root_dir().join("target").join(TARGET).join("release");
    for b in BINARIES {
        let path = bin_dir.join(b);
        ensure!(
            !has_interpreter(&path)?,
            "{} is dynamically linked (it has a program interpreter)",
            path.display()
        );
    }
    // An earlier image of this tag would be left behind untagged.
    let _ = buildah().args(["rmi", &tag]).output();
    eprintln!("xtask: buildah build -f Containerfile -t {tag}");
    run(buildah()
        .args(["build", "--quiet", "-f", "Containerfile", "-t", &tag])
        .arg(root_dir()))?;
    let out = root_dir().join("target/image");
    std::fs::create_dir_all(&out)?;
    let archive = out.join(format!("gangplank-{version}.oci.tar"));
    let _ = std::fs::remove_file(&archive);
    run(buildah().args([
        "push",
        "--quiet",
        &tag,
        &format!("oci-archive:{}:gangplank:{version}", archive.display()),
    ]))?;
    let checked = check(&tag);
    if !opts.keep {
        let _ = buildah().args(["rmi", &tag]).output();
    }
    checked?;
    println!(
        "image {tag}{}; archive {}",
        if opts.keep {
            " (in buildah's storage)"
        } else {
            " (removed from buildah's storage)"
        },
        archive.display()
    );
    Ok(archive)
}

fn buildah() -> Command {
    let mut cmd = Command::new("buildah");
    cmd.current_dir(root_dir());
    cmd
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Mounts a working container of `tag` and checks its files and binaries.
fn check(tag: &str) -> Result<()> {
    let container = output(buildah().args(["from", "--pull-never", "--quiet", tag]))?;
    let result = (|| {
        let mount = PathBuf::from(output(buildah().args(["mount", &container]))?);
        let files = list_files(&mount)?;
        let expected: Vec<String> = BINARIES.iter().map(|b| format!("/{b}")).collect();
        ensure!(
            files == expected,
            "the image holds {files:?}, expected exactly {expected:?}"
        );
        for b in BINARIES {
            let version = output(Command::new(mount.join(b)).arg("--version"))?;
            ensure!(
                version == format!("{b} {}", env!("CARGO_PKG_VERSION")),
                "{b} --version from the image said {version:?}"
            );
            println!("image: /{b} --version: {version}");
        }
        let entrypoint = output(buildah().args([
            "inspect",
            "--type",
            "image",
            "--format",
            "{{.OCIv1.Config.Entrypoint}}",
            tag,
        ]))?;
        ensure!(
            entrypoint == "[/gangplank]",
            "entrypoint {entrypoint}, expected [/gangplank]"
        );
        Ok(())
    })();
    let _ = buildah().args(["umount", &container]).output();
    let _ = buildah().args(["rm", &container]).output();
    result
}

/// Every file, link or other non-directory under `root`, as `/path`;
/// directories only if empty ones other than the root exist.
fn list_files(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut empty = true;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            empty = false;
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else {
                out.push(format!("/{}", path.strip_prefix(root)?.display()));
            }
        }
        if empty && dir != root {
            out.push(format!("/{}/", dir.strip_prefix(root)?.display()));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether the ELF file at `path` has a PT_INTERP program header, i.e.
/// needs a dynamic loader.
fn has_interpreter(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| -> Result<u64> {
        Ok(u16::from_le_bytes(data.get(o..o + 2).context("short ELF")?.try_into()?) as u64)
    };
    let u32_at = |o: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            data.get(o..o + 4).context("short ELF")?.try_into()?,
        ))
    };
    let u64_at = |o: usize| -> Result<u64> {
        Ok(u64::from_le_bytes(
            data.get(o..o + 8).context("short ELF")?.try_into()?,
        ))
    };
    // ELF64, little-endian (x86_64).
    ensure!(
        data.starts_with(b"\x7fELF\x02\x01"),
        "{}: not a 64-bit little-endian ELF file",
        path.display()
    );
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        if u32_at((phoff + i * phentsize) as usize)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself is dynamically linked (glibc): the check
    /// must see its interpreter.
    #[test]
    fn sees_the_interpreter_of_a_dynamic_binary() {
        let exe = std::env::current_exe().expect("exe");
        assert!(has_interpreter(&exe).expect("ELF"));
        let dir = tempfile_dir();
        let not_elf = dir.join("x");
        std::fs::write(&not_elf, b"#!/bin/sh\n").expect("write");
        assert!(has_interpreter(&not_elf).is_err());
        std::fs::write(&not_elf, b"\x7fELF\x02\x01").expect("write");
        assert!(has_interpreter(&not_elf).is_err(), "short ELF");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn lists_files_and_empty_directories() {
        let dir = tempfile_dir().join("root");
        std::fs::create_dir_all(dir.join("etc/empty")).expect("dirs");
        std::fs::write(dir.join("gangplank"), b"").expect("file");
        std::fs::write(dir.join("etc/passwd"), b"").expect("file");
        assert_eq!(
            list_files(&dir).expect("list"),
            ["/etc/empty/", "/etc/passwd", "/gangplank"]
        );
        let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
    }
}
