//! rtnetlink I/O: dumps of links, IPv4 addresses and routes into an
//! [`Inventory`], and the multicast listener behind [`AddressWatcher`].
//!
//! Sockets are opened in the calling thread's network namespace and stay
//! bound to it, whatever thread later reads them.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread::JoinHandle;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tracing::{debug, error, warn};

use super::{Addr, Error, Inventory, Link, Result};

/// rtnetlink message types (linux/rtnetlink.h) the watcher reacts to.
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;

/// A dump interrupted by a concurrent change (NLM_F_DUMP_INTR) may have
/// missed or doubled entries; it is redone this many times before the last
/// (still usable) result is taken.
const DUMP_ATTEMPTS: usize = 5;

/// Receive buffer for the watcher: a burst of changes (a CNI adding many
/// veths) must not overrun it; if it does anyway, ENOBUFS still triggers a
/// re-read.
const WATCH_RCVBUF: usize = 1 << 20;

fn netlink_err(op: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Netlink { op, source }
}

/// A socket for requests to the kernel, in this thread's namespace.
fn request_socket() -> Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(netlink_err("socket(NETLINK_ROUTE)"))?;
    sock.bind_auto().map_err(netlink_err("bind"))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(netlink_err("connect"))?;
    Ok(sock)
}

/// One netlink message out of a datagram.
pub(super) struct Raw<'a> {
    pub message_type: u16,
    pub flags: u16,
    pub sequence: u32,
    pub bytes: &'a [u8],
}

/// Splits a datagram into its messages (each NLMSG_ALIGNed), checking every
/// length so a malformed datagram is an error rather than a panic.
pub(super) fn split(mut buf: &[u8]) -> std::result::Result<Vec<Raw<'_>>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let nl = NetlinkBuffer::new_checked(buf).map_err(|e| e.to_string())?;
        let len = nl.length() as usize;
        out.push(Raw {
            message_type: nl.message_type(),
            flags: nl.flags(),
            sequence: nl.sequence_number(),
            bytes: &buf[..len],
        });
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or_default();
    }
    Ok(out)
}

/// Dumps one kind of object; returns the messages and whether the dump was
/// interrupted by a concurrent change.
fn dump(
    sock: &Socket,
    sequence: u32,
    request: RouteNetlinkMessage,
    what: &'static str,
) -> Result<(Vec<RouteNetlinkMessage>, bool)> {
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.header.sequence_number = sequence;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0).map_err(netlink_err("send"))?;

    let mut out = Vec::new();
    let mut interrupted = false;
    loop {
        let data = match sock.recv_from_full() {
            Ok((data, _)) => data,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(netlink_err("recv")(e)),
        };
        let messages = split(&data).map_err(|reason| Error::Decode {
            request: what,
            reason,
        })?;
        for raw in messages {
            // Left over from an earlier, abandoned request on this socket.
            if raw.sequence != sequence {
                continue;
            }
            interrupted |= raw.flags & NLM_F_DUMP_INTR != 0;
            let parsed = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw.bytes) {
                Ok(m) => m,
                Err(e) => {
                    // One object the crate cannot decode (an attribute newer
                    // than it) must not hide all the others.
                    warn!(request = what, message_type = raw.message_type, error = %e, "skipping an undecodable rtnetlink message");
                    continue;
                }
            };
            match parsed.payload {
                NetlinkPayload::Done(done) if done.code != 0 => {
                    return Err(Error::Kernel {
                        request: what,
                        source: io::Error::from_raw_os_error(-done.code),
                    })
                }
                NetlinkPayload::Done(_) => return Ok((out, interrupted)),
                NetlinkPayload::Error(e) => {
                    return Err(Error::Kernel {
                        request: what,
                        source: e.to_io(),
                    })
                }
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
        }
    }
}

/// Reads links, IPv4 addresses and main-table IPv4 routes.
pub(super) fn inventory() -> Result<Inventory> {
    let sock = request_socket()?;
    let mut sequence = 0;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut any_interrupted = false;
        let mut next = |request, what| {
            sequence += 1;
            let (messages, interrupted) = dump(&sock, sequence, request, what)?;
            any_interrupted |= interrupted;
            Ok::<_, Error>(messages)
        };
        let links = next(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "RTM_GETLINK dump",
        )?;
        let mut addr_req = AddressMessage::default();
        addr_req.header.family = AddressFamily::Inet;
        let addrs = next(
            RouteNetlinkMessage::GetAddress(addr_req),
            "RTM_GETADDR dump",
        )?;
        let mut route_req = RouteMessage::default();
        route_req.header.address_family = AddressFamily::Inet;
        let routes = next(
            RouteNetlinkMessage::GetRoute(route_req),
            "RTM_GETROUTE dump",
        )?;

        if any_interrupted && attempt < DUMP_ATTEMPTS {
            debug!(
                attempt,
                "rtnetlink dump interrupted by a change; reading again"
            );
            continue;
        }
        let mut inv = Inventory::default();
        for m in links {
            if let RouteNetlinkMessage::NewLink(l) = m {
                inv.links.extend(link(&l));
            }
        }
        for m in addrs {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                inv.addrs.extend(addr(&a));
            }
        }
        for m in routes {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                inv.route_oifs.extend(route_oifs(&r));
            }
        }
        inv.links.sort_by_key(|l| l.index);
        return Ok(inv);
    }
}

/// The parts of an RTM_NEWLINK that selection needs; None without a name.
pub(super) fn link(m: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind = None;
    let mut controller = None;
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Controller(index) if *index != 0 => controller = Some(*index),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Some(Link {
        index: m.header.index,
        name: name?,
        up: m.header.flags.contains(LinkFlags::Up),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        ethernet: m.header.link_layer_type == LinkLayerType::Ether,
        kind,
        controller,
    })
}

/// An RTM_NEWADDR as an IPv4 [`Addr`]; None for other families.
pub(super) fn addr(m: &AddressMessage) -> Option<Addr> {
    if m.header.family != AddressFamily::Inet {
        return None;
    }
    let mut local = None;
    let mut address = None;
    // The header holds only the low 8 flag bits; IFA_FLAGS, when present,
    // holds all of them.
    let mut secondary = m.header.flags.contains(AddressHeaderFlags::Secondary);
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
            AddressAttribute::Flags(f) => secondary = f.contains(AddressFlags::Secondary),
            _ => {}
        }
    }
    // For IPv4, IFA_LOCAL is the interface's own address; IFA_ADDRESS is
    // the peer on point-to-point links and equals IFA_LOCAL otherwise.
    let address: Ipv4Addr = local.or(address)?;
    Some(Addr {
        index: m.header.index,
        address,
        global: m.header.scope == AddressScope::Universe,
        secondary,
    })
}

/// Output devices of a main-table IPv4 route (several for multipath).
pub(super) fn route_oifs(m: &RouteMessage) -> Vec<u32> {
    if m.header.address_family != AddressFamily::Inet {
        return Vec::new();
    }
    // Table ids above 255 only fit in RTA_TABLE, which then wins.
    let mut table = u32::from(m.header.table);
    let mut oifs = Vec::new();
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oifs.push(*i),
            RouteAttribute::MultiPath(hops) => {
                oifs.extend(hops.iter().map(|h| h.interface_index));
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return Vec::new();
    }
    oifs.retain(|i| *i != 0);
    oifs
}

// ---------------------------------------------------------------------------
// The watcher
// ---------------------------------------------------------------------------

/// Follows IPv4 address and link changes in the namespace it was started
/// in, and calls back on each (the caller coalesces and re-reads with
/// [`refresh`](super::refresh)).
///
/// Start it *before* the initial [`detect`](super::detect) /
/// [`resolve`](super::resolve), so that a change between the two is not
/// lost. The thread stops when the watcher is dropped.
pub struct AddressWatcher {
    /// Dropping this end wakes the thread's poll(2), which then exits.
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AddressWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressWatcher").finish_non_exhaustive()
    }
}

impl AddressWatcher {
    /// Sends `()` on `tx` for every batch of address or link changes. The
    /// thread ends when the receiver is gone (or the watcher is dropped).
    pub fn start(tx: mpsc::Sender<()>) -> Result<Self> {
        Self::start_with(move || tx.send(()).is_ok())
    }

    /// Calls `notify` for every batch of address or link changes (from the
    /// watcher's thread; it should be quick, e.g. `Notify::notify_one`).
    /// Returning false stops the watcher.
    pub fn start_with(notify: impl FnMut() -> bool + Send + 'static) -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(netlink_err("socket(NETLINK_ROUTE)"))?;
        let groups = (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR) as u32;
        sock.bind(&SocketAddr::new(0, groups))
            .map_err(netlink_err("bind to RTMGRP_LINK|RTMGRP_IPV4_IFADDR"))?;
        if let Err(e) = sock.set_rx_buf_sz(WATCH_RCVBUF) {
            // The default buffer works, it just overruns sooner.
            debug!(error = %e, "could not enlarge the watcher's receive buffer");
        }
        let (stop, stopped) = UnixStream::pair().map_err(Error::Thread)?;
        let thread = std::thread::Builder::new()
            .name("gp-addr-watch".into())
            .spawn(move || watch(sock, stopped, notify))
            .map_err(Error::Thread)?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for AddressWatcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The thread only blocks in poll(2), which the closed stream
            // ends, or in `notify`, which is the caller's to keep short.
            let _ = thread.join();
        }
    }
}

/// Whether a datagram from the multicast groups announces a change the
/// agent must look at. Undecodable datagrams count: re-reading is cheap,
/// missing an address is not.
pub(super) fn announces_change(data: &[u8]) -> bool {
    match split(data) {
        Ok(messages) => messages.iter().any(|m| {
            matches!(
                m.message_type,
                RTM_NEWLINK | RTM_DELLINK | RTM_NEWADDR | RTM_DELADDR
            )
        }),
        Err(_) => true,
    }
}

fn watch(sock: Socket, stopped: UnixStream, mut notify: impl FnMut() -> bool) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stopped.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the duration of
        // the call, and both fds are owned by this function.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            error!(error = %e, "address watcher: poll failed; node address changes are no longer followed");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        let changed = match sock.recv_from_full() {
            Ok((data, _)) => announces_change(&data),
            // The kernel dropped notifications because we fell behind: we
            // cannot know what changed, so have everything re-read.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                warn!(
                    "address watcher: notifications overran the socket; re-reading all addresses"
                );
                true
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(e) => {
                error!(error = %e, "address watcher: recv failed; node address changes are no longer followed");
                return;
            }
        };
        if changed && !notify() {
            return;
        }
    }
}
