//! Idempotent machine set-up: Debian packages, nightly rust-src, and
//! bpf-linker built against the nightly toolchain's own LLVM into the
//! project-local `.tools/` directory (no LLVM download).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{root_dir, run};

/// The bpf-linker release the eBPF build is known to work with (it must
/// support the nightly toolchain's LLVM major).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Commands the tests and the demo need, and the Debian package of each.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    // kube-proxy's rules, which the Services benchmark compares with, are
    // checked end to end by the tests (tests/tests/kube_proxy_rules.rs),
    // and `gangplank bench` runs in them (tests/tests/bench.rs) with the
    // stream client and server and conntrack flushing between runs.
    ("iptables-nft-restore", "iptables"),
    ("nft", "nftables"),
    ("iperf3", "iperf3"),
    ("conntrack", "conntrack"),
    // The image (`cargo xtask image`, part of the test run): buildah, and
    // a musl C compiler for the C code of ring and mimalloc.
    ("buildah", "buildah"),
    ("musl-gcc", "musl-tools"),
];

/// What `cargo xtask bench ingress` compares gangplank-ingress with, and
/// the certificate tool it uses (only installed for that benchmark).
const INGRESS_BENCH_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("haproxy", "haproxy"),
    ("openssl", "openssl"),
];

/// Debian's hook that tells package scripts whether they may start
/// services (exit 101: no). See /usr/share/doc/init-system-helpers/README.policy-rc.d.gz.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn setup() -> Result<()> {
    install_packages(PACKAGES)?;
    install_plot_font()?;
    install_python_tools()?;
    install_rust_src()?;
    install_musl_target()?;
    install_bpf_linker()?;
    check_kernel()?;
    Ok(())
}

fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "installing missing Debian packages needs root: run as root, \
             e.g. `sudo -E cargo xtask setup`"
        );
    }
    Ok(())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs nginx and haproxy for the Ingress benchmark, without letting
/// their packages start the services (the benchmark runs its own instances
/// in a network namespace; a system nginx on port 80 is not wanted).
pub fn install_ingress_bench_packages() -> Result<()> {
    if INGRESS_BENCH_PACKAGES.iter().all(|(cmd, _)| have(cmd)) {
        return Ok(());
    }
    check_root()?;
    let ours = !Path::new(POLICY_RC_D).exists();
    if ours {
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# cargo xtask bench ingress: no service starts\nexit 101\n",
        )
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
        })
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
    }
    let result = install_packages(INGRESS_BENCH_PACKAGES);
    if ours {
        let _ = std::fs::remove_file(POLICY_RC_D);
    }
    result
}

/// Installs the benchmark plots' font (a file, so not in `PACKAGES`,
/// which are checked by command) unless one of the places `gangplank
/// bench` looks has it.
fn install_plot_font() -> Result<()> {
    if gangplank_sim::bench_options::FONT_PATHS
        .iter()
        .any(|p| Path::new(p).is_file())
    {
        return Ok(());
    }
    install_missing(&["fonts-dejavu-core"])
}

fn install_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    install_missing(&missing)
}

/// Installs Debian packages known to be missing.
fn install_missing(missing: &[&str]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    check_root()?;
    if !have("apt-get") {
        bail!("missing packages {missing:?} and no apt-get to install them: install them by hand");
    }
    eprintln!("xtask: installing {missing:?}");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running `rustc +nightly` (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: install it with `rustup toolchain install nightly` ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// The static-binary target of the image.
fn install_musl_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root_dir())
        .output()
        .context("running `rustup target list`")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "x86_64-unknown-linux-musl")
    {
        return Ok(());
    }
    eprintln!("xtask: adding the x86_64-unknown-linux-musl target");
    run(Command::new("rustup")
        .args(["target", "add", "x86_64-unknown-linux-musl"])
        .current_dir(root_dir()))
}

fn install_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// LLVM major version and shared library of the nightly toolchain.
fn nightly_llvm(sysroot: &Path) -> Result<(u32, PathBuf)> {
    let out = Command::new("rustc").args(["+nightly", "-vV"]).output()?;
    let text = String::from_utf8(out.stdout)?;
    let major: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .context("`rustc +nightly -vV` reports no LLVM version")?;
    let lib_dir = sysroot.join("lib");
    let lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .with_context(|| format!("no libLLVM shared library in {}", lib_dir.display()))?;
    Ok((major, lib))
}

pub fn tools_dir() -> PathBuf {
    root_dir().join(".tools")
}

/// The Kubernetes object validator the chart's tests run (official
/// OpenAPI schemas of Kubernetes 1.37, offline), with jsonschema for
/// values.schema.json, in a virtualenv under `.tools/venv`.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn install_python_tools() -> Result<()> {
    let venv = tools_dir().join("venv");
    let marker = venv.join(KUBERNETES_VALIDATE);
    if marker.is_file() {
        return Ok(());
    }
    if !have("python3") {
        install_missing(&["python3", "python3-venv"])?;
    }
    if !venv.join("bin/pip").is_file() {
        let status = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            // Debian's python3 lacks the venv module without this package.
            install_missing(&["python3-venv"])?;
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        }
    }
    eprintln!(
        "xtask: installing {KUBERNETES_VALIDATE} into {}",
        venv.display()
    );
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", KUBERNETES_VALIDATE]))?;
    std::fs::write(&marker, "").with_context(|| format!("writing {}", marker.display()))
}

fn install_bpf_linker() -> Result<()> {
    let tools = tools_dir();
    let linker = tools.join("bin/bpf-linker");
    if linker.is_file() {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let (major, lib) = nightly_llvm(&sysroot)?;
    // bpf-linker's build looks for $LLVM_PREFIX/lib/libLLVM.so; the
    // toolchain ships it under a versioned name, so give it a prefix that
    // points there.
    let prefix = tools.join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)
        .with_context(|| format!("linking {} to {}", link.display(), lib.display()))?;
    eprintln!(
        "xtask: building bpf-linker against the nightly toolchain's LLVM {major} (about a minute)"
    );
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--locked", "--root"])
        .arg(&tools)
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix))
    .context("building bpf-linker (needs the nightly toolchain and a C compiler)")
}

fn check_kernel() -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !mountinfo.lines().any(|l| l.contains(" - cgroup2 ")) {
        bail!("no cgroup v2 filesystem is mounted: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`");
    }
    if !Path::new("/proc/sys/net/core/bpf_jit_enable").exists() {
        bail!("the kernel has no BPF support (CONFIG_BPF_SYSCALL): gangplank needs Linux 5.18+ with BPF and cgroup BPF");
    }
    Ok(())
}
