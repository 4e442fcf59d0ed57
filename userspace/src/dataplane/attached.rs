//! Finding and detaching gangplank's cgroup links by walking the kernel's
//! link table, for `uninstall --cgroup`: a pinned link is detached by
//! removing its pin, but a running agent also holds link fds, and a link
//! whose pin was lost can only be found this way.
//!
//! aya 0.14 does not expose a link's cgroup id, so this speaks the bpf(2)
//! commands directly (include/uapi/linux/bpf.h).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;
const BPF_LINK_GET_NEXT_ID: i64 = 31;
const BPF_LINK_DETACH: i64 = 34;
const BPF_LINK_TYPE_CGROUP: u32 = 3;

use super::sys::{bpf, Attr};

fn next_link_id(start: u32) -> io::Result<Option<u32>> {
    let mut attr: Attr = [0; 16];
    attr[0] = start as u64; // start_id (u32) at offset 0
    match bpf(BPF_LINK_GET_NEXT_ID, &mut attr) {
        Ok(_) => Ok(Some((attr[0] >> 32) as u32)), // next_id at offset 4
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn fd_by_id(cmd: i64, id: u32) -> io::Result<OwnedFd> {
    let mut attr: Attr = [0; 16];
    attr[0] = id as u64;
    let fd = bpf(cmd, &mut attr)?;
    // SAFETY: the kernel just handed us this new fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn info_by_fd(fd: &OwnedFd, info: &mut [u64]) -> io::Result<()> {
    let mut attr: Attr = [0; 16];
    // bpf_fd (u32) | info_len (u32) | info (u64 pointer)
    attr[0] = fd.as_raw_fd() as u64 | (((info.len() * 8) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

/// A cgroup link found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLink {
    pub link_id: u32,
    pub program: String,
}

fn program_name(prog_id: u32) -> io::Result<String> {
    let fd = fd_by_id(BPF_PROG_GET_FD_BY_ID, prog_id)?;
    // struct bpf_prog_info: name[16] sits at byte offset 64.
    let mut info = [0u64; 32];
    info_by_fd(&fd, &mut info)?;
    let bytes: Vec<u8> = info[8..10].iter().flat_map(|w| w.to_le_bytes()).collect();
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// Links attached to `cgroup` running one of gangplank's programs (by
/// name: the kernel keeps the first 15 bytes, which our names fit in).
pub fn gangplank_links(cgroup: &Path) -> io::Result<Vec<(CgroupLink, OwnedFd)>> {
    // On cgroup v2 the cgroup id the kernel reports is the directory's
    // inode number.
    let cgroup_id = std::fs::metadata(cgroup)?.ino();
    let mut found = Vec::new();
    let mut id = 0;
    while let Some(next) = next_link_id(id)? {
        id = next;
        let fd = match fd_by_id(BPF_LINK_GET_FD_BY_ID, id) {
            Ok(fd) => fd,
            // Detached between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        // struct bpf_link_info: type u32, id u32, prog_id u32, pad, then
        // the union; for cgroup links { cgroup_id u64, attach_type u32 }.
        let mut info = [0u64; 8];
        info_by_fd(&fd, &mut info)?;
        let link_type = info[0] as u32;
        let prog_id = info[1] as u32;
        if link_type != BPF_LINK_TYPE_CGROUP || info[2] != cgroup_id {
            continue;
        }
        let program = program_name(prog_id).unwrap_or_default();
        if super::loader::SOCKET_PROGRAMS.contains(&program.as_str()) {
            found.push((
                CgroupLink {
                    link_id: id,
                    program,
                },
                fd,
            ));
        }
    }
    Ok(found)
}

/// Detach every gangplank link at `cgroup`, pinned or held by a process.
pub fn detach_all(cgroup: &Path) -> io::Result<Vec<CgroupLink>> {
    let mut detached = Vec::new();
    for (link, fd) in gangplank_links(cgroup)? {
        let mut attr: Attr = [0; 16];
        attr[0] = fd.as_raw_fd() as u64;
        bpf(BPF_LINK_DETACH, &mut attr)?;
        detached.push(link);
    }
    Ok(detached)
}
