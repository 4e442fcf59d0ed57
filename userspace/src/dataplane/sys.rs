//! The raw bpf(2) syscall, for the few commands aya 0.14 does not wrap
//! (link queries, batch updates). Layouts: include/uapi/linux/bpf.h.

use std::io;

/// Room for any `union bpf_attr` we build (the kernel accepts a larger,
/// zero-padded attr as long as the extra bytes are zero).
pub type Attr = [u64; 16];

pub fn bpf(cmd: i64, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a valid, zero-initialised buffer at least as large as
    // every bpf_attr layout used here, and lives across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<Attr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

const BPF_MAP_UPDATE_BATCH: i64 = 26;

/// Entries per BPF_MAP_UPDATE_BATCH call: large enough that syscall cost
/// vanishes, small enough to keep the kernel's copy buffers modest.
const BATCH: usize = 4096;

/// Insert or replace `keys[i] → values[i]` with as few syscalls as
/// possible (kernel 5.6+ for hash maps).
pub fn update_batch<K: Copy, V: Copy>(map_fd: i32, keys: &[K], values: &[V]) -> io::Result<()> {
    debug_assert_eq!(keys.len(), values.len());
    for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let mut attr: Attr = [0; 16];
        // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32;
        //          elem_flags, flags: u64 }
        attr[2] = k.as_ptr() as u64;
        attr[3] = v.as_ptr() as u64;
        attr[4] = k.len() as u64 | ((map_fd as u32 as u64) << 32);
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        let done = attr[4] as u32 as usize;
        if done != k.len() {
            return Err(io::Error::other(format!(
                "batch update wrote {done} of {} entries",
                k.len()
            )));
        }
    }
    Ok(())
}
