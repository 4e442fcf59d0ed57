//! Small OS helpers: mountinfo parsing, the cgroup2 mount, network namespaces,
//! `ip -batch` invocations and process liveness.
//!
//! Everything here is crate-private; the public surface lives in `cluster`,
//! `process`, `probe` and the crate root.

use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

/// Where `ip netns add` puts its bind mounts.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Root of the harness's temporary files (bpffs mounts, manifests, owner
/// markers). Fixed rather than `$TMPDIR`-relative so that `sweep_stale`, run
/// from xtask, finds what a test binary left behind regardless of environment.
pub(crate) const TMP_ROOT: &str = "/tmp/gangplank-tests";

/// One line of /proc/self/mountinfo, reduced to what the harness needs.
#[derive(Debug, Clone)]
pub(crate) struct MountInfo {
    /// Root of the mount within its filesystem (4th field).
    pub root: PathBuf,
    /// Mount point in our mount namespace (5th field).
    pub mount_point: PathBuf,
    /// Filesystem type (first field after the ` - ` separator).
    pub fstype: String,
}

/// Decodes the octal escapes (`\040` for space, ...) the kernel uses in mountinfo.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = u32::from(oct[0] - b'0') * 64
                    + u32::from(oct[1] - b'0') * 8
                    + u32::from(oct[2] - b'0');
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Parses mountinfo text (see proc(5)); malformed lines are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            // Optional fields end at a lone "-"; it can't appear before index 6.
            let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
            Some(MountInfo {
                root: unescape_mountinfo(fields.get(3)?),
                mount_point: unescape_mountinfo(fields.get(4)?),
                fstype: (*fields.get(sep + 1)?).to_string(),
            })
        })
        .collect()
}

/// Current mounts of this process's mount namespace.
pub(crate) fn mounts() -> Result<Vec<MountInfo>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// The cgroup2 mount point (e.g. /sys/fs/cgroup/unified on hybrid systems,
/// /sys/fs/cgroup on unified ones), found once from mountinfo.
pub fn cgroup2_root() -> Result<&'static Path> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = ROOT.get_or_init(|| {
        let mounts = mounts().map_err(|e| format!("{e:#}"))?;
        mounts
            .into_iter()
            .find(|m| m.fstype == "cgroup2" && m.root == Path::new("/"))
            .map(|m| m.mount_point)
            .ok_or_else(|| {
                "no cgroup2 filesystem is mounted (nothing of type cgroup2 in /proc/self/mountinfo); \
                 end-to-end tests need cgroup v2 (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`)"
                    .to_string()
            })
    });
    match found {
        Ok(p) => Ok(p.as_path()),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// Path of a named network namespace's bind mount.
pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Opens a named network namespace (O_CLOEXEC, as std always does).
pub fn open_netns(name: &str) -> Result<File> {
    let path = netns_path(name);
    File::open(&path).with_context(|| format!("opening network namespace {}", path.display()))
}

/// Moves the *calling thread* into the network namespace `ns`.
///
/// Network namespaces are per task, so this only affects the current thread;
/// callers use a short-lived dedicated thread.
pub fn setns_net(ns: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a valid, open fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One sysctl to set, e.g. `net.ipv4.ip_forward = 1`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sysctl {
    /// Dotted key, relative to /proc/sys.
    pub key: &'static str,
    pub value: &'static str,
    /// Skip silently if the key doesn't exist (e.g. ipv6 on a kernel without it).
    pub optional: bool,
}

/// Writes sysctls inside each named netns: `(netns name, settings)`.
///
/// Done from one scoped thread that `setns`es from namespace to namespace:
/// /proc/sys/net resolves against the *calling task's* netns, and this avoids
/// forking `nsenter sysctl` once per namespace.
pub(crate) fn write_sysctls(jobs: &[(String, Vec<Sysctl>)]) -> Result<()> {
    // Open every namespace from the calling thread first so path errors are
    // reported with context before we start switching namespaces.
    let opened = jobs
        .iter()
        .map(|(ns, settings)| Ok((ns, open_netns(ns)?, settings)))
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<()> {
            for (ns, fd, settings) in &opened {
                setns_net(fd).with_context(|| format!("setns into {ns}"))?;
                for Sysctl {
                    key,
                    value,
                    optional,
                } in settings.iter()
                {
                    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
                    match fs::write(&path, value) {
                        Ok(()) => {}
                        Err(e) if *optional && e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("sysctl {key}={value} in netns {ns}"));
                        }
                    }
                }
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow!("sysctl thread panicked"))?
    })
}

/// One `ip [-n NETNS] [-force] -batch -` invocation.
pub(crate) struct IpBatch {
    /// Namespace to run in (`ip -n`), or None for the root namespace
    /// (only used for `netns add/del`, which touch /run/netns, not interfaces).
    pub netns: Option<String>,
    /// Keep going after a failed line (used for cleanup).
    pub force: bool,
    /// Newline-separated `ip` commands without the leading `ip`.
    pub script: String,
}

/// Runs several `ip -batch` scripts concurrently and waits for all of them;
/// the error lists every failed script with its stderr.
pub(crate) fn ip_batches(batches: &[IpBatch]) -> Result<()> {
    let mut running = Vec::new();
    for b in batches {
        let mut cmd = Command::new("ip");
        if let Some(ns) = &b.netns {
            cmd.arg("-n").arg(ns);
        }
        if b.force {
            cmd.arg("-force");
        }
        cmd.args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let desc = format!("{cmd:?}");
        let spawned = cmd
            .spawn()
            .with_context(|| format!("starting {desc} (is iproute2 installed?)"));
        running.push((b, desc, spawned));
    }
    let mut errors = Vec::new();
    for (b, desc, spawned) in running {
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        // Scripts are a few hundred bytes, far below the pipe buffer, so
        // writing everything before reading output cannot deadlock.
        if let Some(mut stdin) = child.stdin.take() {
            if let Err(e) = stdin.write_all(b.script.as_bytes()) {
                errors.push(format!("{desc}: writing script: {e}"));
            }
        }
        match child.wait_with_output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => errors.push(format!(
                "{desc} failed ({}): {}\n--- script ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                b.script.trim_end()
            )),
            Err(e) => errors.push(format!("{desc}: waiting: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("\n"))
    }
}

/// Deletes the named network namespaces that still exist (missing ones are
/// ignored). Only namespaces that still exist afterwards count as failures,
/// so a concurrent sweeper deleting the same ones is not an error.
pub(crate) fn delete_netns(names: &[String]) -> Result<()> {
    let script: String = names
        .iter()
        .filter(|n| netns_path(n).exists())
        .map(|n| format!("netns del {n}\n"))
        .collect();
    if script.is_empty() {
        return Ok(());
    }
    let result = ip_batches(&[IpBatch {
        netns: None,
        force: true,
        script,
    }]);
    let left: Vec<&String> = names.iter().filter(|n| netns_path(n).exists()).collect();
    match result {
        Err(e) if !left.is_empty() => Err(e.context(format!("network namespaces left: {left:?}"))),
        _ => Ok(()),
    }
}

/// Start time of a process in clock ticks since boot (field 22 of
/// /proc/PID/stat), used to tell a live owner from a recycled pid.
pub(crate) fn pid_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // remaining fields start after the last ')'. Field 3 is index 0 there.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process with this pid exists (zombies count as alive).
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Pids listed in a cgroup's cgroup.procs (empty if the cgroup is gone).
pub(crate) fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// `mount -t bpf bpf <dir>`: a fresh bpffs instance (every bpf mount gets its own superblock).
pub(crate) fn mount_bpffs(dir: &Path) -> Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes()).context("bpffs path contains NUL")?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mount -t bpf bpf {}", dir.display()));
    }
    Ok(())
}

/// Lazily unmounts `dir` (MNT_DETACH, so an open fd elsewhere cannot make
/// cleanup fail). Not being mounted (any more) is not an error.
pub(crate) fn umount_detach(dir: &Path) -> Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes()).context("mount path contains NUL")?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = io::Error::last_os_error();
        let still_mounted = mounts()?.iter().any(|m| m.mount_point == dir);
        if still_mounted {
            return Err(err).with_context(|| format!("umount {}", dir.display()));
        }
    }
    Ok(())
}

/// `rm -rf dir`, where the directory disappearing under us (a concurrent
/// sweeper) is fine.
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(_) if !dir.exists() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Mount points at or below `dir`, deepest first (so they can be unmounted in order).
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Makes sure `TMP_ROOT` exists and is a real root-owned directory, not a
/// symlink someone planted in world-writable /tmp (we mount and delete below it).
pub(crate) fn ensure_tmp_root() -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let root = PathBuf::from(TMP_ROOT);
    match fs::DirBuilder::new().mode(0o755).create(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", root.display())),
    }
    let meta = fs::symlink_metadata(&root).with_context(|| format!("stat {}", root.display()))?;
    if !meta.is_dir() || meta.uid() != 0 {
        bail!(
            "{} exists but is not a root-owned directory (symlink or foreign file?); remove it and retry",
            root.display()
        );
    }
    Ok(root)
}

/// Lists the entries of a directory as names; a missing directory is empty.
pub(crate) fn dir_names(dir: &Path) -> Result<Vec<OsString>> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .with_context(|| format!("listing {}", dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace
/// `netns` (a name under /run/netns), so BPF_PROG_TEST_RUN resolves
/// `ifindex` in the context and FIB lookups against that namespace, and
/// returns its result.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = open_netns(netns)?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            setns_net(&ns).with_context(|| format!("entering netns {netns}"))?;
            Ok(f())
        })
        .join()
        .map_err(|p| match p.downcast::<String>() {
            Ok(s) => anyhow!("thread in netns {netns} panicked: {s}"),
            Err(p) => match p.downcast::<&str>() {
                Ok(s) => anyhow!("thread in netns {netns} panicked: {s}"),
                Err(_) => anyhow!("thread in netns {netns} panicked"),
            },
        })?
    })
}

/// `ifindex` of interface `name` in network namespace `netns`.
pub fn ifindex_in(netns: &str, name: &str) -> Result<u32> {
    let cname = std::ffi::CString::new(name)?;
    let idx = in_netns(netns, || {
        // SAFETY: valid NUL-terminated name.
        unsafe { libc::if_nametoindex(cname.as_ptr()) }
    })?;
    if idx == 0 {
        bail!("no interface {name} in netns {netns}");
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing() {
        let text = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    50 23 0:45 / /tmp/a\\040b rw shared:5 master:1 - bpf bpf rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(m[0].fstype, "cgroup2");
        assert_eq!(m[1].mount_point, Path::new("/tmp/a b"));
        assert_eq!(m[1].fstype, "bpf");
    }

    #[test]
    fn own_start_time() {
        assert!(pid_start_time(std::process::id()).is_some());
    }
}
