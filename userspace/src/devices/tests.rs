use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteNextHop};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink;
use super::*;

/// Builder for a fake namespace.
#[derive(Default)]
struct Ns(Inventory);

impl Ns {
    fn link(mut self, index: u32, name: &str, kind: Option<&str>) -> Self {
        self.0.links.push(Link {
            index,
            name: name.into(),
            up: true,
            loopback: name == "lo",
            ethernet: name != "lo" && kind != Some("ipip"),
            kind: kind.map(Into::into),
            controller: None,
        });
        self
    }

    fn down(mut self, index: u32) -> Self {
        self.find(index).up = false;
        self
    }

    fn port_of(mut self, index: u32, controller: u32) -> Self {
        self.find(index).controller = Some(controller);
        self
    }

    fn find(&mut self, index: u32) -> &mut Link {
        self.0
            .links
            .iter_mut()
            .find(|l| l.index == index)
            .unwrap_or_else(|| panic!("test bug: no link {index}"))
    }

    fn addr(self, index: u32, address: [u8; 4]) -> Self {
        self.addr_full(index, address, true, false)
    }

    fn addr_full(mut self, index: u32, address: [u8; 4], global: bool, secondary: bool) -> Self {
        self.0.addrs.push(Addr {
            index,
            address: address.into(),
            global,
            secondary,
        });
        self
    }

    fn route(mut self, oif: u32) -> Self {
        self.0.route_oifs.insert(oif);
        self
    }
}

/// The simulated node: lo, eth0 (veth uplink), cbr0 (pod bridge), veth0/1
/// (pod veths on cbr0), as `sim/src/cluster.rs` builds it.
fn simulated_node() -> Ns {
    Ns::default()
        .link(1, "lo", None)
        .addr_full(1, [127, 0, 0, 1], false, false)
        .link(2, "eth0", Some("veth"))
        .addr(2, [198, 18, 0, 10])
        .route(2)
        .link(3, "cbr0", Some("bridge"))
        .addr(3, [198, 19, 1, 1])
        .route(3)
        .link(4, "veth0", Some("veth"))
        .port_of(4, 3)
        .link(5, "veth1", Some("veth"))
        .port_of(5, 3)
}

fn names(devices: &[NetDevice]) -> Vec<&str> {
    devices.iter().map(|d| d.name.as_str()).collect()
}

fn ip(a: [u8; 4]) -> Ipv4Addr {
    a.into()
}

#[test]
fn detects_the_uplink_and_nothing_else_on_a_simulated_node() {
    let devices = select_auto(&simulated_node().0).expect("a device");
    assert_eq!(
        devices,
        vec![NetDevice {
            name: "eth0".into(),
            ifindex: 2,
            addresses: vec![ip([198, 18, 0, 10])],
            kind: Some("veth".into()),
        }]
    );
}

#[test]
fn a_device_needs_a_route_and_a_global_address_and_to_be_up() {
    let ns = Ns::default()
        .link(2, "eth0", None)
        .addr(2, [10, 0, 0, 1])
        .route(2)
        // Global address but no route through it.
        .link(3, "dummy0", Some("dummy"))
        .addr(3, [10, 9, 9, 9])
        // Route but only a link-scoped address.
        .link(4, "eth1", None)
        .addr_full(4, [169, 254, 1, 1], false, false)
        .route(4)
        // Everything, but down.
        .link(5, "eth2", None)
        .addr(5, [10, 0, 2, 1])
        .route(5)
        .down(5);
    assert_eq!(names(&select_auto(&ns.0).expect("eth0")), ["eth0"]);
}

#[test]
fn bond_ports_are_left_out_and_the_bond_is_taken() {
    let ns = Ns::default()
        .link(2, "eth0", None)
        .link(3, "eth1", None)
        .link(4, "bond0", Some("bond"))
        .port_of(2, 4)
        .port_of(3, 4)
        .addr(4, [10, 0, 0, 5])
        // Even a port with a stale address and route stays out.
        .addr(2, [10, 1, 0, 5])
        .route(2)
        .route(4);
    assert_eq!(names(&select_auto(&ns.0).expect("bond0")), ["bond0"]);
}

#[test]
fn several_devices_are_sorted_by_ifindex() {
    let ns = Ns::default()
        .link(7, "eth1", None)
        .addr(7, [10, 0, 1, 1])
        .route(7)
        .link(2, "eth0", None)
        .addr(2, [10, 0, 0, 1])
        .route(2);
    let devices = select_auto(&ns.0).expect("two devices");
    assert_eq!(names(&devices), ["eth0", "eth1"]);
}

#[test]
fn primary_addresses_come_before_secondaries() {
    let ns = Ns::default()
        .link(2, "eth0", None)
        .addr_full(2, [198, 18, 0, 55], true, true)
        .addr(2, [198, 18, 0, 10])
        .addr(2, [203, 0, 113, 7])
        .addr_full(2, [10, 0, 0, 1], false, false)
        .route(2);
    let devices = select_auto(&ns.0).expect("eth0");
    assert_eq!(
        devices[0].addresses,
        [
            ip([198, 18, 0, 10]),
            ip([203, 0, 113, 7]),
            ip([198, 18, 0, 55])
        ]
    );
    assert_eq!(devices[0].primary(), Some(ip([198, 18, 0, 10])));
}

#[test]
fn nothing_qualifying_is_an_error_that_says_what_was_seen_and_what_to_do() {
    let ns = Ns::default()
        .link(1, "lo", None)
        .addr_full(1, [127, 0, 0, 1], false, false)
        .link(3, "cbr0", Some("bridge"))
        .addr(3, [198, 19, 1, 1])
        .route(3)
        .link(4, "veth0", Some("veth"))
        .port_of(4, 3)
        .link(5, "eth9", None)
        .down(5);
    let err = select_auto(&ns.0)
        .expect_err("no device qualifies")
        .to_string();
    for expected in [
        "lo (loopback)",
        "cbr0 (bridge)",
        "veth0 (port of cbr0)",
        "eth9 (down)",
        "--devices",
    ] {
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}

#[test]
fn named_devices_are_taken_as_given_even_without_an_address() {
    let mut ns = simulated_node().link(6, "eth1", None);
    ns = ns.down(6);
    let devices =
        select_named(&ns.0, &["eth1".into(), "eth0".into(), "eth0".into()]).expect("both exist");
    assert_eq!(
        devices,
        vec![
            NetDevice {
                name: "eth0".into(),
                ifindex: 2,
                addresses: vec![ip([198, 18, 0, 10])],
                kind: Some("veth".into()),
            },
            NetDevice {
                name: "eth1".into(),
                ifindex: 6,
                addresses: vec![],
                kind: None,
            },
        ]
    );
    // The user may even pick a bridge: the rules are for auto-detection only.
    assert_eq!(
        names(&select_named(&ns.0, &["cbr0".into()]).expect("cbr0")),
        ["cbr0"]
    );
}

#[test]
fn an_unknown_name_is_an_error_naming_it_and_listing_what_exists() {
    let err = select_named(&simulated_node().0, &["eth0".into(), "nope".into()])
        .expect_err("nope does not exist")
        .to_string();
    assert!(err.contains("\"nope\""), "{err}");
    assert!(err.contains("cbr0, eth0, lo, veth0, veth1"), "{err}");
}

#[test]
fn an_empty_list_is_an_error() {
    let err = select_named(&simulated_node().0, &[" ".into()]).expect_err("empty");
    assert!(matches!(err, Error::EmptyDeviceList), "{err}");
}

#[test]
fn refresh_follows_addresses_and_re_created_devices() {
    let mut devices = select_auto(&simulated_node().0).expect("eth0");
    assert!(!refresh_from(&simulated_node().0, &mut devices));

    let added = simulated_node().addr(2, [198, 18, 0, 210]);
    assert!(refresh_from(&added.0, &mut devices));
    assert_eq!(
        devices[0].addresses,
        [ip([198, 18, 0, 10]), ip([198, 18, 0, 210])]
    );

    // eth0 deleted: it keeps its ifindex but holds no node address.
    let mut gone = simulated_node();
    gone.0.links.retain(|l| l.name != "eth0");
    gone.0.addrs.retain(|a| a.index != 2);
    assert!(refresh_from(&gone.0, &mut devices));
    assert_eq!((devices[0].ifindex, devices[0].addresses.len()), (2, 0));

    // Re-created under a new ifindex.
    let back = gone
        .link(9, "eth0", Some("veth"))
        .addr(9, [198, 18, 0, 11])
        .route(9);
    assert!(refresh_from(&back.0, &mut devices));
    assert_eq!(
        devices[0],
        NetDevice {
            name: "eth0".into(),
            ifindex: 9,
            addresses: vec![ip([198, 18, 0, 11])],
            kind: Some("veth".into()),
        }
    );
}

#[test]
fn table_lists_devices_and_marks_missing_addresses() {
    let out = table(&[
        NetDevice {
            name: "eth0".into(),
            ifindex: 2,
            addresses: vec![ip([198, 18, 0, 10]), ip([198, 18, 0, 210])],
            kind: None,
        },
        NetDevice {
            name: "eth1".into(),
            ifindex: 10,
            addresses: vec![],
            kind: None,
        },
    ]);
    assert_eq!(
        out,
        "DEVICE  IFINDEX  ADDRESSES\n\
         eth0    2        198.18.0.10,198.18.0.210\n\
         eth1    10       -\n"
    );
}

#[test]
fn tunnels_are_not_detected_and_cannot_be_named() {
    // An ipip tunnel with an address and a route carries bare IP packets:
    // the datapath parses Ethernet, so it must stay out.
    let ns = Ns::default()
        .link(1, "lo", None)
        .link(2, "eth0", None)
        .link(3, "tunl0", Some("ipip"))
        .addr(2, [198, 18, 0, 10])
        .addr(3, [10, 99, 0, 1])
        .route(2)
        .route(3);
    let found = select_auto(&ns.0).expect("eth0 qualifies");
    assert_eq!(
        found.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["eth0"]
    );
    let err = select_named(&ns.0, &["tunl0".to_string()]).expect_err("not Ethernet");
    assert!(
        err.to_string().contains("tunl0 is not an Ethernet device"),
        "{err}"
    );
}

// -- decoding of rtnetlink messages -----------------------------------------

#[test]
fn link_messages_give_name_flags_kind_and_controller() {
    let mut m = LinkMessage::default();
    m.header.index = 4;
    m.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
    m.header.link_layer_type = LinkLayerType::Ether;
    m.attributes = vec![
        LinkAttribute::IfName("veth0".into()),
        LinkAttribute::Controller(3),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
    ];
    assert_eq!(
        netlink::link(&m),
        Some(Link {
            index: 4,
            name: "veth0".into(),
            up: true,
            loopback: false,
            ethernet: true,
            kind: Some("veth".into()),
            controller: Some(3),
        })
    );

    let mut lo = LinkMessage::default();
    lo.header.index = 1;
    lo.header.flags = LinkFlags::Up | LinkFlags::Loopback;
    lo.attributes = vec![
        LinkAttribute::IfName("lo".into()),
        LinkAttribute::Controller(0),
    ];
    let lo = netlink::link(&lo).expect("named");
    assert!(lo.loopback && lo.controller.is_none() && lo.kind.is_none());

    assert_eq!(netlink::link(&LinkMessage::default()), None, "no name");
}

fn addr_message(index: u32, local: Option<[u8; 4]>, address: [u8; 4]) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.index = index;
    m.header.prefix_len = 24;
    m.attributes
        .push(AddressAttribute::Address(IpAddr::V4(address.into())));
    if let Some(l) = local {
        m.attributes
            .push(AddressAttribute::Local(IpAddr::V4(l.into())));
    }
    m
}

#[test]
fn address_messages_prefer_the_local_address_and_read_scope_and_flags() {
    // Point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL ours.
    let m = addr_message(2, Some([10, 0, 0, 1]), [10, 0, 0, 2]);
    assert_eq!(
        netlink::addr(&m),
        Some(Addr {
            index: 2,
            address: ip([10, 0, 0, 1]),
            global: true,
            secondary: false,
        })
    );

    let mut m = addr_message(2, None, [198, 18, 0, 55]);
    m.header.flags = AddressHeaderFlags::Secondary;
    assert!(netlink::addr(&m).expect("v4").secondary);
    // IFA_FLAGS, when present, is authoritative.
    m.attributes
        .push(AddressAttribute::Flags(AddressFlags::Permanent));
    assert!(!netlink::addr(&m).expect("v4").secondary);

    let mut m = addr_message(1, Some([127, 0, 0, 1]), [127, 0, 0, 1]);
    m.header.scope = AddressScope::Host;
    assert!(!netlink::addr(&m).expect("v4").global);

    let mut v6 = AddressMessage::default();
    v6.header.family = AddressFamily::Inet6;
    assert_eq!(netlink::addr(&v6), None);
}

#[test]
fn routes_count_only_in_the_main_table_with_every_next_hop() {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.table = 254;
    m.attributes = vec![RouteAttribute::Oif(2)];
    assert_eq!(netlink::route_oifs(&m), [2]);

    let mut hop_a = RouteNextHop::default();
    hop_a.interface_index = 3;
    let mut hop_b = RouteNextHop::default();
    hop_b.interface_index = 4;
    m.attributes = vec![RouteAttribute::MultiPath(vec![hop_a, hop_b])];
    assert_eq!(netlink::route_oifs(&m), [3, 4]);

    // The local table (255) holds every address's /32: not a "route".
    m.header.table = 255;
    m.attributes = vec![RouteAttribute::Oif(2)];
    assert!(netlink::route_oifs(&m).is_empty());

    // A table id above 255 lives in RTA_TABLE only.
    m.header.table = 252;
    m.attributes = vec![RouteAttribute::Table(1000), RouteAttribute::Oif(2)];
    assert!(netlink::route_oifs(&m).is_empty());
    m.attributes = vec![RouteAttribute::Table(254), RouteAttribute::Oif(2)];
    assert_eq!(netlink::route_oifs(&m), [2]);
}

fn serialized(payload: RouteNetlinkMessage) -> Vec<u8> {
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(payload));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

#[test]
fn the_watcher_reacts_to_address_and_link_messages_only() {
    let new_addr = serialized(RouteNetlinkMessage::NewAddress(addr_message(
        2,
        Some([198, 18, 0, 210]),
        [198, 18, 0, 210],
    )));
    let new_route = serialized(RouteNetlinkMessage::NewRoute(RouteMessage::default()));
    assert!(netlink::announces_change(&new_addr));
    assert!(!netlink::announces_change(&new_route));

    // Two messages in one datagram, the second one relevant.
    let mut both = new_route.clone();
    while !both.len().is_multiple_of(4) {
        both.push(0);
    }
    both.extend(serialized(RouteNetlinkMessage::DelLink(
        LinkMessage::default(),
    )));
    let split = netlink::split(&both).expect("well-formed");
    assert_eq!(split.len(), 2);
    assert!(netlink::announces_change(&both));

    // Garbage counts as a change (re-reading is the safe side), and never panics.
    assert!(netlink::announces_change(&[0xff; 7]));
    let mut lying = new_addr.clone();
    lying[0] = 0xff; // length field larger than the datagram
    assert!(netlink::split(&lying).is_err());
}
