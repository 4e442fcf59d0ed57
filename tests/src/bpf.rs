//! Just enough bpf(2) to plant a pinned map with the wrong layout, so tests
//! can check that the agent refuses maps it did not create.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

const BPF_MAP_CREATE: i64 = 0;
const BPF_OBJ_PIN: i64 = 6;
const BPF_MAP_TYPE_HASH: u32 = 1;

fn bpf(cmd: i64, attr: &mut [u32; 32]) -> std::io::Result<i64> {
    // SAFETY: attr is a zeroed buffer larger than the bpf_attr layouts used
    // here and outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128u32) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// Create a hash map with the given layout and pin it at `path` (on bpffs).
pub fn pin_hash_map(path: &Path, key_size: u32, value_size: u32, max_entries: u32) -> Result<()> {
    // union bpf_attr, BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries (u32 each), then fields left zero.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_HASH, key_size, value_size, max_entries]);
    let fd = bpf(BPF_MAP_CREATE, &mut attr).context("BPF_MAP_CREATE")? as i32;
    let cpath = CString::new(path.as_os_str().as_bytes())?;
    // BPF_OBJ_PIN: pathname (u64 pointer), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u32; 32];
    let ptr = cpath.as_ptr() as u64;
    attr[0] = ptr as u32;
    attr[1] = (ptr >> 32) as u32;
    attr[2] = fd as u32;
    let pinned = bpf(BPF_OBJ_PIN, &mut attr);
    // SAFETY: fd came from BPF_MAP_CREATE above and is closed once.
    unsafe { libc::close(fd) };
    if let Err(e) = pinned {
        bail!("pinning a map at {}: {e}", path.display());
    }
    Ok(())
}
