//! One view of a packet for the tc and XDP programs: loads and stores at an
//! offset, and checksum fix-ups, so the load-balancing code is written once.
//!
//! Everything goes through the kernel's load/store helpers rather than
//! direct packet access: they work on non-linear skbs (GSO, paged data)
//! without a pull, and keep the verifier's job simple. tc uses the kernel's
//! checksum helpers, which also handle `CHECKSUM_PARTIAL` skbs (packets
//! from local sockets on veths carry only the pseudo-header sum); XDP has
//! no skb, so it updates checksums itself (RFC 1624).

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::generated::{bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::{TcContext, XdpContext},
    EbpfContext,
};

/// `BPF_F_PSEUDO_HDR`: the changed field is part of the pseudo-header.
const F_PSEUDO_HDR: u64 = 0x10;
/// `BPF_F_MARK_MANGLED_0`: UDP: keep a zero ("no checksum") as is, and
/// write 0xffff where the result would be zero.
const F_MARK_MANGLED_0: u64 = 0x20;

/// Where a checksum lives and what kind it is.
#[derive(Clone, Copy)]
pub enum Csum {
    /// The IPv4 header checksum at this offset.
    Ip(usize),
    /// A TCP checksum at this offset (covers the pseudo-header).
    Tcp(usize),
    /// A UDP checksum at this offset (covers the pseudo-header; 0 = none).
    Udp(usize),
    /// An ICMP checksum at this offset (no pseudo-header).
    Icmp(usize),
}

pub trait Packet {
    fn load<T: Copy>(&self, off: usize) -> Option<T>;
    fn store<T: Copy>(&mut self, off: usize, value: &T) -> Option<()>;
    /// Account in checksum `csum` for a 16- or 32-bit field (`size` 2 or
    /// 4) changing from `from` to `to` (both as loaded from the packet).
    /// `pseudo`: the field is an address of the pseudo-header (only
    /// relevant to TCP/UDP checksums).
    fn csum_replace(
        &mut self,
        csum: Csum,
        from: u32,
        to: u32,
        size: u8,
        pseudo: bool,
    ) -> Option<()>;
}

impl Packet for TcContext {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        TcContext::load(self, off).ok()
    }

    #[inline(always)]
    fn store<T: Copy>(&mut self, off: usize, value: &T) -> Option<()> {
        TcContext::store(self, off, value, 0).ok()
    }

    #[inline(always)]
    fn csum_replace(
        &mut self,
        csum: Csum,
        from: u32,
        to: u32,
        size: u8,
        pseudo: bool,
    ) -> Option<()> {
        let size = size as u64;
        let result = match csum {
            Csum::Ip(off) => self.l3_csum_replace(off, from as u64, to as u64, size),
            Csum::Tcp(off) => {
                let flags = size | if pseudo { F_PSEUDO_HDR } else { 0 };
                self.l4_csum_replace(off, from as u64, to as u64, flags)
            }
            Csum::Udp(off) => {
                let flags = size | F_MARK_MANGLED_0 | if pseudo { F_PSEUDO_HDR } else { 0 };
                self.l4_csum_replace(off, from as u64, to as u64, flags)
            }
            Csum::Icmp(off) => self.l4_csum_replace(off, from as u64, to as u64, size),
        };
        result.ok()
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        let mut value = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes or fails.
        let ret = unsafe {
            bpf_xdp_load_bytes(
                self.as_ptr() as *mut _,
                off as u32,
                value.as_mut_ptr() as *mut c_void,
                size_of::<T>() as u32,
            )
        };
        if ret != 0 {
            return None;
        }
        // SAFETY: fully written by the helper.
        Some(unsafe { value.assume_init() })
    }

    #[inline(always)]
    fn store<T: Copy>(&mut self, off: usize, value: &T) -> Option<()> {
        // SAFETY: the helper reads size_of::<T>() bytes from `value`.
        let ret = unsafe {
            bpf_xdp_store_bytes(
                self.as_ptr() as *mut _,
                off as u32,
                value as *const T as *mut c_void,
                size_of::<T>() as u32,
            )
        };
        (ret == 0).then_some(())
    }

    #[inline(always)]
    fn csum_replace(
        &mut self,
        csum: Csum,
        from: u32,
        to: u32,
        size: u8,
        _pseudo: bool,
    ) -> Option<()> {
        let (off, udp) = match csum {
            Csum::Ip(off) | Csum::Tcp(off) | Csum::Icmp(off) => (off, false),
            Csum::Udp(off) => (off, true),
        };
        let old: u16 = self.load(off)?;
        if udp && old == 0 {
            // No checksum: stays none.
            return Some(());
        }
        let mut new = csum_update(old, from, to, size);
        if udp && new == 0 {
            new = 0xffff;
        }
        self.store(off, &new)
    }
}

/// RFC 1624 incremental update: HC' = ~(~HC + ~m + m'), on 16-bit words
/// in the byte order they were loaded in (one's-complement sums do not
/// care, as long as every word is read the same way).
#[inline(always)]
pub fn csum_update(csum: u16, from: u32, to: u32, size: u8) -> u16 {
    let mut sum = (!csum) as u32;
    if size == 4 {
        sum += (!(from >> 16)) & 0xffff;
        sum += (!from) & 0xffff;
        sum += to >> 16;
        sum += to & 0xffff;
    } else {
        sum += (!from) & 0xffff;
        sum += to & 0xffff;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
