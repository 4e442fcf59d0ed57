use super::*;

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().expect("socket address")
}

const CLIENT: &str = "198.18.0.100:40000";
const NODEPORT: &str = "198.18.0.10:30080";

#[test]
fn ipv4_header_checksum_matches_a_known_vector() {
    // The worked example of RFC 1071 style checksums (Wikipedia, "IPv4
    // header checksum"): 192.168.0.1 -> 192.168.0.199, UDP, checksum 0xb861.
    let hdr: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(checksum(&hdr), 0);
    assert_eq!(expected_in_place(&hdr, 10), 0xb861);
}

#[test]
fn odd_length_sums_pad_with_zero() {
    assert_eq!(checksum(&[0x01]), !0x0100);
    assert_eq!(checksum(&[0x01, 0x00]), checksum(&[0x01]));
}

#[test]
fn tcp_syn_round_trips_with_valid_checksums() {
    let p = Packet::tcp(sa(CLIENT), sa(NODEPORT), TCP_SYN);
    let bytes = p.build();
    assert_eq!(bytes.len(), ETH_HLEN + 20 + 20);
    let f = Frame::parse(&bytes).expect("parses");
    f.assert_checksums("built SYN");
    assert_eq!(f.addrs(), Some((sa(CLIENT), sa(NODEPORT))));
    let ip = f.ipv4();
    assert_eq!((ip.ttl, ip.proto, ip.frag), (64, IPPROTO_TCP, IP_DF));
    match f.l4 {
        Some(Transport::Tcp { flags, .. }) => assert_eq!(flags, TCP_SYN),
        other => panic!("expected TCP, got {other:?}"),
    }
}

#[test]
fn udp_with_payload_zero_and_bad_checksums() {
    let p = Packet::udp(sa(CLIENT), sa(NODEPORT), b"hello, odd");
    let f = Frame::parse(&p.build()).expect("parses");
    f.assert_checksums("UDP");
    assert!(!f.checks().udp_zero);

    let f = Frame::parse(&p.clone().l4_csum(Csum::Zero).build()).expect("parses");
    let c = f.checks();
    assert!(c.failures.is_empty() && c.udp_zero, "{c:?}");

    let f = Frame::parse(&p.clone().l4_csum(Csum::Bad).build()).expect("parses");
    let c = f.checks();
    assert_eq!(c.failures.len(), 1, "{c:?}");
    assert!(c.failures[0].starts_with("UDP checksum"), "{c:?}");

    let f = Frame::parse(&p.ip_csum(Csum::Bad).build()).expect("parses");
    let c = f.checks();
    assert_eq!(c.failures.len(), 1, "{c:?}");
    assert!(c.failures[0].starts_with("IPv4 header"), "{c:?}");
}

#[test]
fn bad_tcp_checksum_is_reported_with_the_right_value() {
    let good = Packet::tcp(sa(CLIENT), sa(NODEPORT), TCP_ACK).payload(b"x");
    let good_sum = match Frame::parse(&good.build()).unwrap().l4 {
        Some(Transport::Tcp { checksum, .. }) => checksum,
        other => panic!("{other:?}"),
    };
    let f = Frame::parse(&good.l4_csum(Csum::Bad).build()).unwrap();
    let c = f.checks();
    assert_eq!(c.failures.len(), 1);
    assert!(
        c.failures[0].contains(&format!("should be {good_sum:#06x}")),
        "{c:?}"
    );
}

#[test]
fn udp_checksum_that_computes_to_zero_is_sent_as_ffff() {
    // Search a payload whose checksum computes to 0 (then 0xffff is sent).
    for n in 0u16..=u16::MAX {
        let p = Packet::udp(sa(CLIENT), sa(NODEPORT), &n.to_be_bytes());
        let f = Frame::parse(&p.build()).unwrap();
        if let Some(Transport::Udp { checksum, .. }) = f.l4 {
            if checksum == 0xffff {
                f.assert_checksums("0xffff UDP checksum");
                assert!(!f.checks().udp_zero);
                return;
            }
        }
    }
    panic!("no payload gives a 0xffff UDP checksum");
}

#[test]
fn ip_options_are_padded_and_dsr_option_decodes() {
    let svc = sa("198.18.0.200:80");
    let p = Packet::tcp(sa(CLIENT), sa("198.19.2.10:8080"), TCP_SYN).ip_options(&dsr_option(svc));
    let f = Frame::parse(&p.build()).unwrap();
    f.assert_checksums("DSR SYN");
    assert_eq!(f.ipv4().ihl, 28);
    assert_eq!(f.ipv4().dsr(), Some(svc));

    // NOP + record route (3 bytes) gets padded to 8.
    let p = Packet::udp(sa(CLIENT), sa(NODEPORT), b"x").ip_options(&[1, 7, 3, 4]);
    let f = Frame::parse(&p.build()).unwrap();
    assert_eq!(f.ipv4().ihl, 24);
    assert_eq!(f.ipv4().dsr(), None);
    f.assert_checksums("options");
}

#[test]
fn fragments() {
    let first = Packet::udp(sa(CLIENT), sa(NODEPORT), &[7; 32]).frag(IP_MF);
    let f = Frame::parse(&first.build()).unwrap();
    assert!(f.ipv4().is_fragment());
    assert!(matches!(f.l4, Some(Transport::Udp { .. })));
    let c = f.checks();
    assert!(c.failures.is_empty() && c.skipped.len() == 1, "{c:?}");

    let later = Packet::raw(
        *sa(CLIENT).ip(),
        *sa(NODEPORT).ip(),
        IPPROTO_UDP,
        &[1, 2, 3, 4, 5, 6, 7, 8],
    )
    .frag(185);
    let f = Frame::parse(&later.build()).unwrap();
    assert_eq!(f.ipv4().frag_offset(), 1480);
    assert!(matches!(f.l4, Some(Transport::Fragment { .. })), "{f:?}");
}

#[test]
fn icmp_error_quotes_the_datagram_with_both_checksums_checked() {
    // The backend's port-unreachable about a request the node DNATed.
    let req = Packet::udp(sa(CLIENT), sa("198.19.1.10:5353"), b"query").ttl(63);
    let err = Packet::icmp_error(
        "198.19.1.10".parse().unwrap(),
        *sa(CLIENT).ip(),
        ICMP_DEST_UNREACH,
        ICMP_PORT_UNREACH,
        &req.ip_bytes(),
    );
    let f = Frame::parse(&err.build()).unwrap();
    f.assert_checksums("ICMP error");
    let Some(Transport::Icmp {
        type_,
        code,
        quoted: Some(q),
        ..
    }) = &f.l4
    else {
        panic!("expected an ICMP error: {f:?}");
    };
    assert_eq!((*type_, *code), (3, 3));
    assert_eq!(q.ip.dst, "198.19.1.10".parse::<Ipv4Addr>().unwrap());
    assert_eq!((q.sport, q.dport), (Some(40000), Some(5353)));
    assert_eq!(q.l4_checksum_ok(), Some(true));

    // Corrupt the quoted header's checksum, then fix the outer ICMP sum:
    // only the inner failure must be reported.
    let mut quoted = req.ip_bytes();
    quoted[10] ^= 0xff;
    let err = Packet::icmp_error(
        "198.19.1.10".parse().unwrap(),
        *sa(CLIENT).ip(),
        ICMP_TIME_EXCEEDED,
        0,
        &quoted[..28],
    );
    let f = Frame::parse(&err.build()).unwrap();
    let c = f.checks();
    assert_eq!(c.failures.len(), 1, "{c:?}");
    assert!(c.failures[0].starts_with("quoted IPv4"), "{c:?}");
    if let Some(Transport::Icmp {
        quoted: Some(q), ..
    }) = &f.l4
    {
        assert_eq!(q.l4_checksum_ok(), None, "only 8 bytes quoted");
    }

    // A flipped byte in the ICMP body breaks the outer checksum.
    let mut bytes = err.build();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let c = Frame::parse(&bytes).unwrap().checks();
    assert!(
        c.failures.iter().any(|f| f.starts_with("ICMP checksum")),
        "{c:?}"
    );
}

#[test]
fn echo_is_not_an_error() {
    let p = Packet::icmp_echo(*sa(CLIENT).ip(), *sa(NODEPORT).ip(), 7, 1);
    let f = Frame::parse(&p.build()).unwrap();
    f.assert_checksums("echo");
    assert!(matches!(
        f.l4,
        Some(Transport::Icmp {
            quoted: None,
            type_: ICMP_ECHO_REQUEST,
            ..
        })
    ));
}

#[test]
fn truncations_and_inconsistencies_are_parse_errors() {
    let bytes = Packet::tcp(sa(CLIENT), sa(NODEPORT), TCP_SYN).build();
    for n in [0, 13] {
        assert!(Frame::parse(&bytes[..n]).is_err(), "{n} bytes");
    }
    for n in [14, 20, 33] {
        let e = Frame::parse(&bytes[..n]).unwrap_err();
        assert!(e.0.contains("IPv4"), "{n}: {e}");
    }
    // IP total length claims more than present.
    let e = Frame::parse(&bytes[..50]).unwrap_err();
    assert!(e.0.contains("total length"), "{e}");
    // Header complete but TCP header cut (total length adjusted).
    let p = Packet::tcp(sa(CLIENT), sa(NODEPORT), TCP_SYN).total_len(30);
    let e = Frame::parse(&p.build()[..ETH_HLEN + 30]).unwrap_err();
    assert!(e.0.contains("TCP header truncated"), "{e}");
    // Ethernet padding beyond total length is ignored.
    let mut padded = Packet::udp(sa(CLIENT), sa(NODEPORT), b"").build();
    padded.extend_from_slice(&[0; 18]);
    Frame::parse(&padded).unwrap().assert_checksums("padded");
}

#[test]
fn non_ip_frames_parse_without_ip() {
    let f = Frame::parse(
        &Packet::udp(sa(CLIENT), sa(NODEPORT), b"")
            .ethertype(ETH_P_ARP)
            .build(),
    )
    .unwrap();
    assert_eq!(f.ethertype, ETH_P_ARP);
    assert!(f.ip.is_none());
    assert!(f.checks().failures.is_empty());
}

#[test]
fn hexdiff_names_changed_bytes() {
    assert_eq!(hexdiff(&[1, 2, 3], &[1, 9, 3]), "  byte 1: 0x02 -> 0x09\n");
}
