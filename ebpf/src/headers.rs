//! Header layouts and offsets (Ethernet + IPv4, no VLAN), and the parsed
//! view of a packet the load balancer works on. Multi-byte fields are kept
//! exactly as they are on the wire (network byte order).

use gangplank_common::{PROTO_TCP, PROTO_UDP};

use crate::packet::{Csum, Packet};

pub const ETH_HLEN: usize = 14;
/// ETH_P_IP (0x0800) as a `u16` loaded from the wire on a little-endian CPU.
const ETH_P_IP_WIRE: u16 = 0x0008;
/// Offsets of IPv4 header fields from the start of the frame.
pub const IP_OFF: usize = ETH_HLEN;
pub const IP_TOT_LEN: usize = IP_OFF + 2;
pub const IP_TTL: usize = IP_OFF + 8;
pub const IP_CSUM: usize = IP_OFF + 10;
pub const IP_SADDR: usize = IP_OFF + 12;
pub const IP_DADDR: usize = IP_OFF + 16;
/// Where the first IP option starts.
pub const IP_OPTIONS: usize = IP_OFF + 20;

pub const PROTO_ICMP: u8 = 1;
/// ICMP types that quote the packet they are about.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROB: u8 = 12;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// A TCP or UDP packet's 5-tuple and where its headers are.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// Whether the IPv4 header has options (the first may be ours, DSR).
    pub has_options: bool,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
}

impl Flow {
    /// The L4 checksum of this flow.
    #[inline(always)]
    pub fn l4_csum(&self) -> Csum {
        if self.proto == PROTO_TCP {
            Csum::Tcp(self.l4_off + 16)
        } else {
            Csum::Udp(self.l4_off + 6)
        }
    }

    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.proto == PROTO_TCP
    }
}

/// An ICMP error quoting a TCP or UDP packet.
#[derive(Clone, Copy)]
pub struct IcmpError {
    /// Outer addresses.
    pub saddr: u32,
    pub daddr: u32,
    /// Offset of the ICMP header.
    pub icmp_off: usize,
    /// Offset of the quoted IPv4 header.
    pub inner_ip_off: usize,
    /// The quoted packet's 5-tuple; `inner.l4_off` is the quoted L4 header.
    pub inner: Flow,
}

pub enum Parsed {
    Flow(Flow),
    IcmpError(IcmpError),
}

/// Parse an Ethernet + IPv4 frame. `None` for anything we never translate:
/// not IPv4, truncated or malformed headers, fragments (only the first one
/// has ports; the kernel reassembles them for local delivery), protocols
/// other than TCP, UDP and ICMP errors.
#[inline(always)]
pub fn parse<P: Packet>(p: &P) -> Option<Parsed> {
    let eth_proto: u16 = p.load(12)?;
    if eth_proto != ETH_P_IP_WIRE {
        return None;
    }
    let ip: Ipv4Hdr = p.load(IP_OFF)?;
    let ihl = (ip.ver_ihl & 0x0f) as usize * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    // More-fragments flag or a fragment offset: a fragment.
    if u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return None;
    }
    let l4_off = IP_OFF + ihl;
    match ip.proto {
        PROTO_TCP | PROTO_UDP => {
            let ports: [u16; 2] = p.load(l4_off)?;
            let tcp_flags = if ip.proto == PROTO_TCP {
                // Make sure the whole fixed TCP header is there (the
                // checksum at +16 is rewritten later).
                let _: [u8; 20] = p.load(l4_off)?;
                p.load::<u8>(l4_off + 13)?
            } else {
                let _: [u8; 8] = p.load(l4_off)?;
                0
            };
            Some(Parsed::Flow(Flow {
                saddr: ip.saddr,
                daddr: ip.daddr,
                sport: ports[0],
                dport: ports[1],
                proto: ip.proto,
                tcp_flags,
                has_options: ihl > 20,
                l4_off,
            }))
        }
        PROTO_ICMP => {
            let icmp_type: u8 = p.load(l4_off)?;
            if !matches!(
                icmp_type,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB
            ) {
                return None;
            }
            let inner_ip_off = l4_off + 8;
            let inner: Ipv4Hdr = p.load(inner_ip_off)?;
            let inner_ihl = (inner.ver_ihl & 0x0f) as usize * 4;
            if inner.ver_ihl >> 4 != 4 || inner_ihl < 20 {
                return None;
            }
            if inner.proto != PROTO_TCP && inner.proto != PROTO_UDP {
                return None;
            }
            let inner_l4 = inner_ip_off + inner_ihl;
            // An ICMP error quotes at least 8 bytes of the L4 header.
            let ports: [u16; 2] = p.load(inner_l4)?;
            Some(Parsed::IcmpError(IcmpError {
                saddr: ip.saddr,
                daddr: ip.daddr,
                icmp_off: l4_off,
                inner_ip_off,
                inner: Flow {
                    saddr: inner.saddr,
                    daddr: inner.daddr,
                    sport: ports[0],
                    dport: ports[1],
                    proto: inner.proto,
                    tcp_flags: 0,
                    has_options: inner_ihl > 20,
                    l4_off: inner_l4,
                },
            }))
        }
        _ => None,
    }
}
