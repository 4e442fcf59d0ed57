//! Header rewriting on the way through: hop-by-hop headers removed both ways
//! (RFC 9110 section 7.6.1), `X-Forwarded-*` and `X-Real-IP` set from the
//! socket, trusting what came before only from configured proxies.

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Port`.
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Real-IP`.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `Keep-Alive` (not in `http::header`).
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Proxy-Connection` (non-standard, sent by old clients).
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// An IP network, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a
/// single host. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a
/// dual-stack listener reports for IPv4 peers) match IPv4 networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A [`Cidr`] that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: expected ADDRESS or ADDRESS/PREFIX-LENGTH")]
pub struct CidrError {
    /// What was given.
    pub input: String,
}

impl Cidr {
    /// The network `addr/prefix`; `None` when `prefix` is longer than the
    /// address. Host bits of `addr` are ignored.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError {
            input: s.to_owned(),
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => {
                let addr: IpAddr = addr.parse().map_err(|_| err())?;
                (addr, prefix.parse::<u8>().map_err(|_| err())?)
            }
            None => {
                let addr: IpAddr = s.parse().map_err(|_| err())?;
                let addr = addr.to_canonical();
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        Cidr::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Removes the hop-by-hop headers from `headers`: `Connection` and every
/// header it names, `Keep-Alive`, `Proxy-Connection`, `TE` (except a
/// `trailers` token, which is end-to-end in practice: gRPC needs it),
/// `Trailer`, `Transfer-Encoding` and `Upgrade`. Returns the `Upgrade` value
/// when `Connection` carried the `upgrade` token, so the caller can put the
/// pair back for a protocol switch it chooses to forward.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut wants_upgrade = false;
    // Taken first: `Connection: upgrade` names it, and would remove it.
    let upgrade = headers.remove(header::UPGRADE);
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                if t.eq_ignore_ascii_case("upgrade") {
                    wants_upgrade = true;
                }
                !t.is_empty()
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        headers.remove(header::CONNECTION);
        for name in listed {
            headers.remove(name);
        }
    }
    let keep_te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        })
    });
    headers.remove(header::TE);
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    if wants_upgrade {
        upgrade
    } else {
        None
    }
}

/// Puts back `Connection: upgrade` and `Upgrade: protocol` after
/// [`strip_hop_by_hop`], for a protocol switch being forwarded.
pub fn restore_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// What the proxy knows about the client connection, for
/// [`set_forwarded`].
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// The peer address of the client socket.
    pub peer: SocketAddr,
    /// `http` or `https`: the listener's scheme.
    pub proto: &'static str,
    /// The host the request was routed on (Host or `:authority`, as sent).
    pub host: &'a HeaderValue,
    /// The port the client connected to.
    pub port: u16,
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host`, `-Port` and `X-Real-IP`.
///
/// When the socket peer is not in `trusted` (the default: nothing is
/// trusted), whatever the client sent in these headers is discarded:
/// `X-Forwarded-For` and `X-Real-IP` become the peer address, the others
/// describe this hop. When the peer is a trusted proxy, its
/// `X-Forwarded-For` is kept with the peer appended, `X-Real-IP` becomes the
/// rightmost address of that list that is not a trusted proxy (nginx
/// `real_ip_recursive`), and the proxy's `X-Forwarded-Proto/-Host/-Port` are
/// kept when present.
pub fn set_forwarded(headers: &mut HeaderMap, client: Client<'_>, trusted: &[Cidr]) {
    let peer = client.peer.ip().to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut real_ip = peer;
    let xff = if is_trusted(peer) {
        let previous: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        for hop in previous.iter().rev() {
            if !is_trusted(real_ip) {
                break;
            }
            match parse_hop(hop) {
                Some(ip) => real_ip = ip,
                // Not an address: stop at the last one we could read.
                None => break,
            }
        }
        let mut xff = previous.join(", ");
        if !xff.is_empty() {
            xff.push_str(", ");
        }
        xff.push_str(&peer.to_string());
        xff
    } else {
        for name in [&X_FORWARDED_PROTO, &X_FORWARDED_HOST, &X_FORWARDED_PORT] {
            headers.remove(name);
        }
        peer.to_string()
    };
    // Both are built from header values and IP addresses: always valid.
    if let Ok(v) = HeaderValue::try_from(xff) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::try_from(real_ip.to_string()) {
        headers.insert(&X_REAL_IP, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        headers.insert(&X_FORWARDED_HOST, client.host.clone());
    }
    if !headers.contains_key(&X_FORWARDED_PORT) {
        headers.insert(&X_FORWARDED_PORT, HeaderValue::from(client.port));
    }
}

/// One `X-Forwarded-For` element: an address, possibly with a port
/// (`1.2.3.4:5`, `[::1]:5`), which some proxies add.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// HTTP/2 may split `Cookie` into one header per crumb; an HTTP/1.1
/// upstream needs them joined with `"; "` (RFC 9113 section 8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}
