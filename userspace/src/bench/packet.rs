//! Crafting and dissecting Ethernet/IPv4/TCP/UDP/ICMP frames for
//! BPF_PROG_TEST_RUN, with every checksum checked the way a receiving
//! kernel would.
//!
//! Building: [`Packet::tcp`], [`Packet::udp`], [`Packet::icmp_echo`],
//! [`Packet::icmp_error`] and [`Packet::raw`] give a correct frame; the
//! builder methods then bend it (IP options, fragment bits, TTL, broken or
//! zero checksums) and [`Packet::build`] serialises it. Truncated frames are
//! plain `Vec::truncate` on the result.
//!
//! Parsing: [`Frame::parse`] decodes one frame; [`Frame::verify`] checks the
//! IPv4 header checksum, the TCP/UDP checksum with its pseudo-header (a zero
//! UDP checksum means "none", RFC 768), the ICMP checksum over the whole
//! message, and the IPv4 header checksum of the datagram an ICMP error
//! quotes (RFC 792).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of ARP (a frame the datapath must leave alone).
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_SCTP: u8 = 132;

/// TCP flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// ICMP types and codes used by the tests.
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// IPv4 flag bits of the fragment field (host order).
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;

/// Length of an Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;

/// What to put into a checksum field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Csum {
    /// The correct value.
    #[default]
    Correct,
    /// 0 (for UDP: "no checksum", which is valid; elsewhere simply wrong).
    Zero,
    /// The correct value with every bit flipped in the low byte: wrong,
    /// but never 0 (which UDP would read as "none").
    Bad,
}

/// The transport part of a [`Packet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    /// TCP without options.
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        payload: Vec<u8>,
    },
    /// UDP.
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// ICMP: type, code, the 4 "rest of header" bytes, then the body (for
    /// errors: the quoted datagram).
    Icmp {
        type_: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
    },
    /// Any other protocol: the bytes after the IPv4 header, as given.
    Raw { proto: u8, payload: Vec<u8> },
}

impl L4 {
    /// The IPv4 protocol number.
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::Icmp { .. } => IPPROTO_ICMP,
            L4::Raw { proto, .. } => *proto,
        }
    }
}

/// A frame to build: Ethernet, IPv4 (with optional options and fragment
/// bits), and a transport part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub ethertype: u16,
    pub tos: u8,
    pub id: u16,
    /// Flags and fragment offset (in 8-byte units), host order:
    /// `IP_DF`, `IP_MF | 0`, `185` (offset 1480 bytes) ...
    pub frag: u16,
    pub ttl: u8,
    /// Overrides the protocol number of [`Packet::l4`] (e.g. to label TCP
    /// bytes as something else).
    pub proto: Option<u8>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IPv4 options, padded with EOL (0) to a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub ip_csum: Csum,
    pub l4_csum: Csum,
    /// Overrides the IPv4 total length field.
    pub total_len: Option<u16>,
    pub l4: L4,
}

/// Locally administered MACs, so a frame never looks like a real host's.
pub const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
pub const MAC_NODE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

impl Packet {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            eth_dst: MAC_NODE,
            eth_src: MAC_CLIENT,
            ethertype: ETH_P_IP,
            tos: 0,
            id: 0x1234,
            frag: IP_DF,
            ttl: 64,
            proto: None,
            src,
            dst,
            options: vec![],
            ip_csum: Csum::Correct,
            l4_csum: Csum::Correct,
            total_len: None,
            l4,
        }
    }

    /// A TCP segment `src → dst` with `flags` (e.g. [`TCP_SYN`]).
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Self::new(
            *src.ip(),
            *dst.ip(),
            L4::Tcp {
                sport: src.port(),
                dport: dst.port(),
                seq: 0x0100_0000,
                ack: if flags & TCP_ACK != 0 { 0x0200_0000 } else { 0 },
                flags,
                window: 64240,
                payload: vec![],
            },
        )
    }

    /// A UDP datagram `src → dst` carrying `payload`.
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Self {
        Self::new(
            *src.ip(),
            *dst.ip(),
            L4::Udp {
                sport: src.port(),
                dport: dst.port(),
                payload: payload.to_vec(),
            },
        )
    }

    /// An ICMP echo request.
    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, ident: u16, seq: u16) -> Self {
        let mut rest = [0u8; 4];
        rest[..2].copy_from_slice(&ident.to_be_bytes());
        rest[2..].copy_from_slice(&seq.to_be_bytes());
        Self::new(
            src,
            dst,
            L4::Icmp {
                type_: ICMP_ECHO_REQUEST,
                code: 0,
                rest,
                body: b"gangplank-ping".to_vec(),
            },
        )
    }

    /// An ICMP error (`type_`/`code`, e.g. [`ICMP_DEST_UNREACH`] /
    /// [`ICMP_PORT_UNREACH`]) from `src` to `dst`, quoting `quoted`: the
    /// offending IPv4 datagram starting at its IP header (see
    /// [`Packet::ip_bytes`]); RFC 792 asks for at least its header and the
    /// first 8 bytes of its payload, Linux quotes up to 576 bytes in all.
    pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, type_: u8, code: u8, quoted: &[u8]) -> Self {
        let mut p = Self::new(
            src,
            dst,
            L4::Icmp {
                type_,
                code,
                rest: [0; 4],
                body: quoted.to_vec(),
            },
        );
        p.frag = 0;
        p.tos = 0xc0;
        p
    }

    /// Any protocol number with an opaque payload.
    pub fn raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Self {
        Self::new(
            src,
            dst,
            L4::Raw {
                proto,
                payload: payload.to_vec(),
            },
        )
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Raw IPv4 option bytes (padded with EOL to a multiple of 4; at most 40).
    pub fn ip_options(mut self, options: &[u8]) -> Self {
        assert!(options.len() <= 40, "IPv4 options are at most 40 bytes");
        self.options = options.to_vec();
        self
    }

    /// Flags and fragment offset, host order (see [`Packet::frag`]).
    pub fn frag(mut self, frag: u16) -> Self {
        self.frag = frag;
        self
    }

    pub fn ip_csum(mut self, csum: Csum) -> Self {
        self.ip_csum = csum;
        self
    }

    pub fn l4_csum(mut self, csum: Csum) -> Self {
        self.l4_csum = csum;
        self
    }

    pub fn ethertype(mut self, ethertype: u16) -> Self {
        self.ethertype = ethertype;
        self
    }

    pub fn proto(mut self, proto: u8) -> Self {
        self.proto = Some(proto);
        self
    }

    pub fn total_len(mut self, len: u16) -> Self {
        self.total_len = Some(len);
        self
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    /// TCP/UDP payload (panics for other protocols).
    pub fn payload(mut self, data: &[u8]) -> Self {
        match &mut self.l4 {
            L4::Tcp { payload, .. } | L4::Udp { payload, .. } => *payload = data.to_vec(),
            other => panic!("payload() on {other:?}"),
        }
        self
    }

    /// The transport bytes with their checksum filled in as asked.
    fn l4_bytes(&self) -> Vec<u8> {
        let mut out;
        let csum_at;
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                payload,
            } => {
                out = Vec::with_capacity(20 + payload.len());
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&ack.to_be_bytes());
                out.push(5 << 4); // data offset: 5 words, no options
                out.push(*flags);
                out.extend_from_slice(&window.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                out.extend_from_slice(payload);
                csum_at = Some((16, true));
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                out = Vec::with_capacity(8 + payload.len());
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(payload);
                csum_at = Some((6, true));
            }
            L4::Icmp {
                type_,
                code,
                rest,
                body,
            } => {
                out = vec![*type_, *code, 0, 0];
                out.extend_from_slice(rest);
                out.extend_from_slice(body);
                csum_at = Some((2, false));
            }
            L4::Raw { payload, .. } => {
                out = payload.clone();
                csum_at = None;
            }
        }
        if let Some((at, pseudo)) = csum_at {
            let sum = if pseudo {
                l4_checksum(self.src, self.dst, self.l4.proto(), &out)
            } else {
                checksum(&out)
            };
            // RFC 768: a computed UDP checksum of 0 is sent as 0xffff.
            let sum = if sum == 0 && self.l4.proto() == IPPROTO_UDP {
                0xffff
            } else {
                sum
            };
            let value = match self.l4_csum {
                Csum::Correct => sum,
                Csum::Zero => 0,
                Csum::Bad => sum ^ 0x00ff,
            };
            out[at..at + 2].copy_from_slice(&value.to_be_bytes());
        }
        out
    }

    /// The IPv4 datagram (IP header onwards), e.g. to quote in an ICMP error.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let ihl = 5 + options.len() / 4;
        let l4 = self.l4_bytes();
        let total = self
            .total_len
            .unwrap_or((ihl * 4 + l4.len()) as u16)
            .to_be_bytes();
        let mut ip = Vec::with_capacity(ihl * 4 + l4.len());
        ip.push(0x40 | ihl as u8);
        ip.push(self.tos);
        ip.extend_from_slice(&total);
        ip.extend_from_slice(&self.id.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto.unwrap_or(self.l4.proto()));
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&options);
        let sum = checksum(&ip);
        let value = match self.ip_csum {
            Csum::Correct => sum,
            Csum::Zero => 0,
            Csum::Bad => sum ^ 0x00ff,
        };
        ip[10..12].copy_from_slice(&value.to_be_bytes());
        ip.extend_from_slice(&l4);
        ip
    }

    /// The whole frame.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(ETH_HLEN + 64);
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&self.ethertype.to_be_bytes());
        f.extend_from_slice(&self.ip_bytes());
        f
    }
}

/// The DSR IPv4 option of gangplank's map contract (Cilium's encoding):
/// type `0x9a`, length 8, service port, service address.
pub fn dsr_option(service: SocketAddrV4) -> [u8; 8] {
    let mut o = [0u8; 8];
    o[0] = gangplank_common::DSR_OPT_TYPE;
    o[1] = gangplank_common::DSR_OPT_LEN;
    o[2..4].copy_from_slice(&service.port().to_be_bytes());
    o[4..8].copy_from_slice(&service.ip().octets());
    o
}

// ---------------------------------------------------------------------------
// checksums
// ---------------------------------------------------------------------------

/// Ones' complement sum of 16-bit big-endian words (odd length padded with 0),
/// not yet folded or complemented.
fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum (RFC 1071) of `data`: 0 over data that contains a
/// correct checksum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

/// TCP/UDP checksum of `segment` (checksum field included as it is) with
/// the IPv4 pseudo-header: 0 if the segment's checksum is correct.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut acc = sum16(&src.octets(), 0);
    acc = sum16(&dst.octets(), acc);
    acc += u64::from(proto);
    acc += segment.len() as u64;
    !fold(sum16(segment, acc))
}

// ---------------------------------------------------------------------------
// parsing
// ---------------------------------------------------------------------------

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A decoded IPv4 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4 {
    pub ihl: usize,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    /// Flags and fragment offset, host order.
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub checksum: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub options: Vec<u8>,
    /// The header bytes (for checksum verification).
    pub header: Vec<u8>,
}

impl Ipv4 {
    /// Decodes the header at the start of `b` (only the header must be there).
    pub fn parse(b: &[u8]) -> Result<Ipv4, ParseError> {
        if b.len() < 20 {
            return err(format!("IPv4 header truncated: {} bytes", b.len()));
        }
        if b[0] >> 4 != 4 {
            return err(format!("IP version {} is not 4", b[0] >> 4));
        }
        let ihl = usize::from(b[0] & 0xf) * 4;
        if ihl < 20 {
            return err(format!("IPv4 IHL {ihl} bytes < 20"));
        }
        if b.len() < ihl {
            return err(format!(
                "IPv4 header of {ihl} bytes truncated at {}",
                b.len()
            ));
        }
        Ok(Ipv4 {
            ihl,
            tos: b[1],
            total_len: be16(b, 2),
            id: be16(b, 4),
            frag: be16(b, 6),
            ttl: b[8],
            proto: b[9],
            checksum: be16(b, 10),
            src: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
            dst: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
            options: b[20..ihl].to_vec(),
            header: b[..ihl].to_vec(),
        })
    }

    /// Whether the header checksum verifies.
    pub fn checksum_ok(&self) -> bool {
        checksum(&self.header) == 0
    }

    /// More fragments follow, or this is not the first fragment.
    pub fn is_fragment(&self) -> bool {
        self.frag & IP_MF != 0 || self.frag & 0x1fff != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(self.frag & 0x1fff) * 8
    }

    /// The DSR option ([`dsr_option`]), if the header carries one.
    pub fn dsr(&self) -> Option<SocketAddrV4> {
        let o = &self.options;
        let mut i = 0;
        while i < o.len() {
            match o[i] {
                0 => return None,
                1 => i += 1,
                t => {
                    let len = usize::from(*o.get(i + 1)?);
                    if len < 2 || i + len > o.len() {
                        return None;
                    }
                    if t == gangplank_common::DSR_OPT_TYPE && len == 8 {
                        let port = be16(o, i + 2);
                        let ip = Ipv4Addr::new(o[i + 4], o[i + 5], o[i + 6], o[i + 7]);
                        return Some(SocketAddrV4::new(ip, port));
                    }
                    i += len;
                }
            }
        }
        None
    }
}

/// A decoded transport part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        checksum: u16,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        len: u16,
        checksum: u16,
        payload: Vec<u8>,
    },
    Icmp {
        type_: u8,
        code: u8,
        checksum: u16,
        rest: [u8; 4],
        /// For errors (dest unreachable, time exceeded, ...): the quoted datagram.
        quoted: Option<Quoted>,
        body: Vec<u8>,
    },
    /// A non-first fragment: no transport header.
    Fragment { payload: Vec<u8> },
    /// Any other protocol.
    Other { proto: u8, payload: Vec<u8> },
}

/// The datagram quoted by an ICMP error: its IPv4 header and the start of
/// its transport header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted {
    pub ip: Ipv4,
    /// Source/destination port of a quoted TCP/UDP header (or ICMP echo id
    /// in `sport`), when at least 4 bytes are quoted.
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// The quoted bytes after the IPv4 header.
    pub l4: Vec<u8>,
}

impl Quoted {
    /// The quoted TCP/UDP checksum verified, if the whole segment was
    /// quoted (Linux quotes up to 576 bytes); `None` when it cannot be
    /// checked, or is a zero UDP checksum.
    pub fn l4_checksum_ok(&self) -> Option<bool> {
        let full = usize::from(self.ip.total_len).checked_sub(self.ip.ihl)?;
        if self.l4.len() < full || self.ip.is_fragment() {
            return None;
        }
        let seg = &self.l4[..full];
        match self.ip.proto {
            IPPROTO_TCP if seg.len() >= 20 => {
                Some(l4_checksum(self.ip.src, self.ip.dst, IPPROTO_TCP, seg) == 0)
            }
            IPPROTO_UDP if seg.len() >= 8 => {
                if be16(seg, 6) == 0 {
                    None
                } else {
                    Some(l4_checksum(self.ip.src, self.ip.dst, IPPROTO_UDP, seg) == 0)
                }
            }
            _ => None,
        }
    }
}

/// ICMP types whose body quotes the offending datagram (RFC 792).
fn icmp_is_error(type_: u8) -> bool {
    matches!(type_, 3 | 4 | 5 | 11 | 12)
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub ethertype: u16,
    /// `None` for non-IPv4 frames.
    pub ip: Option<Ipv4>,
    pub l4: Option<Transport>,
    /// The IPv4 datagram bytes up to `total_len` (Ethernet padding cut off).
    pub datagram: Vec<u8>,
}

/// Result of checking a frame's checksums.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checks {
    /// Every failed check, described.
    pub failures: Vec<String>,
    /// The UDP checksum was 0 ("none").
    pub udp_zero: bool,
    /// Checks that could not be made (fragments), described.
    pub skipped: Vec<String>,
}

impl Frame {
    /// Decodes Ethernet, IPv4 and the transport header. Fails on anything
    /// truncated or inconsistent (total length beyond the frame, IHL < 5).
    pub fn parse(frame: &[u8]) -> Result<Frame, ParseError> {
        if frame.len() < ETH_HLEN {
            return err(format!("Ethernet header truncated: {} bytes", frame.len()));
        }
        let mut f = Frame {
            eth_dst: frame[0..6].try_into().expect("6 bytes"),
            eth_src: frame[6..12].try_into().expect("6 bytes"),
            ethertype: be16(frame, 12),
            ip: None,
            l4: None,
            datagram: vec![],
        };
        if f.ethertype != ETH_P_IP {
            return Ok(f);
        }
        let b = &frame[ETH_HLEN..];
        let ip = Ipv4::parse(b)?;
        let total = usize::from(ip.total_len);
        if total < ip.ihl {
            return err(format!(
                "IPv4 total length {total} < header length {}",
                ip.ihl
            ));
        }
        if total > b.len() {
            return err(format!(
                "IPv4 total length {total} beyond the {} bytes present",
                b.len()
            ));
        }
        let datagram = &b[..total];
        let data = &datagram[ip.ihl..];
        f.l4 = Some(if ip.frag_offset() != 0 {
            Transport::Fragment {
                payload: data.to_vec(),
            }
        } else {
            parse_transport(ip.proto, data)?
        });
        f.datagram = datagram.to_vec();
        f.ip = Some(ip);
        Ok(f)
    }

    /// The IPv4 header; panics for non-IPv4 frames.
    pub fn ipv4(&self) -> &Ipv4 {
        self.ip.as_ref().expect("an IPv4 frame")
    }

    /// Source and destination of a TCP/UDP frame.
    pub fn addrs(&self) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let ip = self.ip.as_ref()?;
        let (sport, dport) = match self.l4.as_ref()? {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport, .. } => {
                (*sport, *dport)
            }
            _ => return None,
        };
        Some((
            SocketAddrV4::new(ip.src, sport),
            SocketAddrV4::new(ip.dst, dport),
        ))
    }

    /// Checks every checksum a receiver would: IPv4 header; TCP/UDP with
    /// the pseudo-header (UDP 0 = none); ICMP over the whole message; the
    /// quoted IPv4 header of an ICMP error. Checksums of fragments cannot
    /// be checked alone and are listed in `skipped`.
    pub fn checks(&self) -> Checks {
        let mut c = Checks::default();
        let Some(ip) = &self.ip else {
            return c;
        };
        if !ip.checksum_ok() {
            c.failures.push(format!(
                "IPv4 header checksum {:#06x} wrong (should be {:#06x})",
                ip.checksum,
                expected_in_place(&ip.header, 10)
            ));
        }
        let seg = &self.datagram[ip.ihl..];
        match &self.l4 {
            Some(_) if ip.is_fragment() => c
                .skipped
                .push("transport checksum of a fragment".to_string()),
            Some(Transport::Tcp { checksum, .. })
                if l4_checksum(ip.src, ip.dst, IPPROTO_TCP, seg) != 0 =>
            {
                c.failures.push(format!(
                    "TCP checksum {checksum:#06x} wrong (should be {:#06x})",
                    expected_l4(ip, seg, 16)
                ));
            }
            Some(Transport::Udp { checksum, .. }) => {
                if *checksum == 0 {
                    c.udp_zero = true;
                } else if l4_checksum(ip.src, ip.dst, IPPROTO_UDP, seg) != 0 {
                    c.failures.push(format!(
                        "UDP checksum {checksum:#06x} wrong (should be {:#06x})",
                        expected_l4(ip, seg, 6)
                    ));
                }
            }
            Some(Transport::Icmp {
                checksum: sum,
                quoted,
                ..
            }) => {
                if checksum(seg) != 0 {
                    c.failures.push(format!(
                        "ICMP checksum {sum:#06x} wrong (should be {:#06x})",
                        expected_in_place(seg, 2)
                    ));
                }
                if let Some(q) = quoted {
                    if !q.ip.checksum_ok() {
                        c.failures.push(format!(
                            "quoted IPv4 header checksum {:#06x} wrong (should be {:#06x})",
                            q.ip.checksum,
                            expected_in_place(&q.ip.header, 10)
                        ));
                    }
                }
            }
            _ => {}
        }
        c
    }

    /// Panics, naming `what` and the frame, unless every checksum verifies.
    pub fn assert_checksums(&self, what: &str) {
        let c = self.checks();
        assert!(
            c.failures.is_empty(),
            "{what}: checksums do not verify: {:?}\nframe: {self:#?}",
            c.failures
        );
    }
}

/// The value a checksum field at `at` should hold for `data` to verify.
fn expected_in_place(data: &[u8], at: usize) -> u16 {
    let mut d = data.to_vec();
    if d.len() >= at + 2 {
        d[at] = 0;
        d[at + 1] = 0;
    }
    checksum(&d)
}

fn expected_l4(ip: &Ipv4, seg: &[u8], at: usize) -> u16 {
    let mut d = seg.to_vec();
    if d.len() >= at + 2 {
        d[at] = 0;
        d[at + 1] = 0;
    }
    let sum = l4_checksum(ip.src, ip.dst, ip.proto, &d);
    if sum == 0 && ip.proto == IPPROTO_UDP {
        0xffff
    } else {
        sum
    }
}

fn parse_transport(proto: u8, data: &[u8]) -> Result<Transport, ParseError> {
    Ok(match proto {
        IPPROTO_TCP => {
            if data.len() < 20 {
                return err(format!("TCP header truncated: {} bytes", data.len()));
            }
            let off = usize::from(data[12] >> 4) * 4;
            if off < 20 || off > data.len() {
                return err(format!(
                    "TCP data offset {off} invalid for {} bytes",
                    data.len()
                ));
            }
            Transport::Tcp {
                sport: be16(data, 0),
                dport: be16(data, 2),
                seq: be32(data, 4),
                ack: be32(data, 8),
                flags: data[13],
                checksum: be16(data, 16),
                payload: data[off..].to_vec(),
            }
        }
        IPPROTO_UDP => {
            if data.len() < 8 {
                return err(format!("UDP header truncated: {} bytes", data.len()));
            }
            let len = be16(data, 4);
            if usize::from(len) != data.len() {
                return err(format!(
                    "UDP length {len} but {} bytes after the IP header",
                    data.len()
                ));
            }
            Transport::Udp {
                sport: be16(data, 0),
                dport: be16(data, 2),
                len,
                checksum: be16(data, 6),
                payload: data[8..].to_vec(),
            }
        }
        IPPROTO_ICMP => {
            if data.len() < 8 {
                return err(format!("ICMP header truncated: {} bytes", data.len()));
            }
            let type_ = data[0];
            let body = &data[8..];
            let quoted = if icmp_is_error(type_) {
                let ip = Ipv4::parse(body)
                    .map_err(|e| ParseError(format!("ICMP error's quoted datagram: {e}")))?;
                let l4 = body[ip.ihl..].to_vec();
                let ports = |i: usize| (l4.len() >= i + 2).then(|| be16(&l4, i));
                Some(Quoted {
                    sport: ports(0),
                    dport: ports(2),
                    ip,
                    l4,
                })
            } else {
                None
            };
            Transport::Icmp {
                type_,
                code: data[1],
                checksum: be16(data, 2),
                rest: data[4..8].try_into().expect("4 bytes"),
                quoted,
                body: body.to_vec(),
            }
        }
        _ => Transport::Other {
            proto,
            payload: data.to_vec(),
        },
    })
}

/// One line per difference between two frames' bytes, for failure messages.
pub fn hexdiff(a: &[u8], b: &[u8]) -> String {
    let mut out = String::new();
    if a.len() != b.len() {
        out.push_str(&format!("lengths {} vs {}\n", a.len(), b.len()));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            out.push_str(&format!("  byte {i}: {x:#04x} -> {y:#04x}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
