//! Checks run before the agent touches the kernel, each failing with one
//! message that says what is missing and how to fix it.

use std::ffi::CString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// `statfs` magic numbers (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A missing prerequisite.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not running with the privileges BPF needs.
    #[error(
        "gangplank agent needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): run it as root"
    )]
    NotRoot,
    /// The pin directory is not on a bpf filesystem.
    #[error("{path} is not on a bpf filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf` or pass --bpffs")]
    NoBpffs { path: PathBuf },
    /// The cgroup path is not a cgroup v2 directory.
    #[error("{path} is not a cgroup v2 directory: mount cgroup2 (`mount -t cgroup2 none /sys/fs/cgroup`) or pass --cgroup")]
    NoCgroup2 { path: PathBuf },
    /// No cgroup2 mount found to default to.
    #[error("no cgroup v2 filesystem is mounted (see /proc/self/mountinfo): mount one with `mount -t cgroup2 none /sys/fs/cgroup` or pass --cgroup")]
    NoCgroup2Mount,
    /// The kernel is too old for a hook we rely on.
    #[error("kernel {found} is too old: gangplank needs Linux {needed}+ ({why})")]
    OldKernel {
        found: String,
        needed: &'static str,
        why: &'static str,
    },
}

fn fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path, buf is a valid out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    (rc == 0).then_some(buf.f_type as i64)
}

/// The nearest existing ancestor (the pin directory may not exist yet).
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

pub fn require_root() -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    Ok(())
}

/// Whether `path` itself is the root or a directory of a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    fs_magic(path) == Some(BPF_FS_MAGIC)
}

pub fn require_bpffs(path: &Path) -> Result<(), Error> {
    let on_bpffs = existing_ancestor(path).and_then(fs_magic) == Some(BPF_FS_MAGIC);
    if !on_bpffs {
        return Err(Error::NoBpffs { path: path.into() });
    }
    Ok(())
}

pub fn require_cgroup2(path: &Path) -> Result<(), Error> {
    if fs_magic(path) != Some(CGROUP2_SUPER_MAGIC) {
        return Err(Error::NoCgroup2 { path: path.into() });
    }
    Ok(())
}

/// The socket hooks fail connect() with ECONNREFUSED through
/// `bpf_set_retval`, which cgroup sock_addr programs have since 5.18.
pub fn require_kernel() -> Result<(), Error> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (5, 18) {
        return Err(Error::OldKernel {
            found: release.to_string(),
            needed: "5.18",
            why: "bpf_set_retval in cgroup sock_addr programs",
        });
    }
    Ok(())
}

/// Mount point of the cgroup v2 hierarchy (/sys/fs/cgroup on most systems,
/// /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf, Error> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_cgroup2_mount(&info).ok_or(Error::NoCgroup2Mount)
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mountpoint opts... - fstype ...
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(unescape_mount_path))?
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as octal
/// escapes (`\040`...), see proc(5).
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The hostname, the default of a name flag (`--node-name`, as the kubelet
/// defaults it; the ingress's `--pod-name`). Errors name `flag` and `env`.
pub fn hostname(flag: &str, env: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .with_context(|| format!("reading the hostname for the default {flag}"))?;
    let name = name.trim();
    if name.is_empty() {
        anyhow::bail!("the hostname is empty: pass {flag} (or set {env})");
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
        let info = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                    27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
        let escaped = "26 25 0:23 / /run/my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/run/my cgroups"))
        );
    }

    #[test]
    fn rejects_paths_that_are_not_bpffs_or_cgroup2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = require_bpffs(&dir.path().join("gangplank")).expect_err("tmp is not bpffs");
        assert!(
            err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
            "{err}"
        );
        let err = require_cgroup2(dir.path()).expect_err("tmp is not cgroup2");
        assert!(
            err.to_string().contains("not a cgroup v2 directory"),
            "{err}"
        );
    }
}
