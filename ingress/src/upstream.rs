//! Where a Service backend's requests go: an immutable snapshot mapping each
//! [`ServiceBackend`] a route names (namespace, Service, port number or name)
//! to the ready endpoint addresses of that port, and the round-robin cursor
//! over them.
//!
//! Pure data, no I/O. The model builds a new [`UpstreamTable`] from Services
//! and EndpointSlices on every change and the proxy swaps an
//! `Arc<UpstreamTable>` in atomically (see `Proxy::set_upstreams`); requests
//! in flight keep the snapshot they started with. The key is the route's
//! [`ServiceBackend`] exactly as written (by port number or by port name), so
//! [`build_upstreams`] inserts each backend under the key the Ingress used;
//! resolving the Service port to the endpoints' `targetPort` happens there,
//! not in the proxy.
//!
//! Round-robin cursors and in-flight counts live in the snapshot: a swap
//! restarts them, which costs nothing but a slightly uneven first round
//! (requests still running on the old snapshot release their counts there).

mod build;
#[cfg(test)]
mod tests;

use crate::FastMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::Authority;

use crate::annotations::LoadBalance;
use crate::route::{ServiceBackend, ServicePort};

pub use build::{build_upstreams, UpstreamError, UpstreamErrorKind, SERVICE_NAME_LABEL};

/// The ready endpoints of one Service port, with a round-robin cursor and
/// per-endpoint counts of requests in flight.
#[derive(Debug, Default)]
pub struct Endpoints {
    /// Ready endpoint addresses (pod IP and target port), in a stable order.
    addrs: Vec<SocketAddr>,
    /// The next index [`Endpoints::next`] hands out, modulo `addrs.len()`.
    cursor: AtomicUsize,
    /// Requests in flight per endpoint (same order as `addrs`), for
    /// least-requests balancing.
    in_flight: Box<[AtomicU32]>,
    /// `addrs` as URI authorities, built once rather than per request.
    authorities: Box<[Authority]>,
}

fn authority(addr: &SocketAddr) -> Authority {
    // A socket address always makes a valid authority.
    Authority::try_from(addr.to_string()).unwrap_or_else(|_| Authority::from_static("invalid"))
}

/// One request in flight on an endpoint: counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    endpoints: Arc<Endpoints>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoints.in_flight[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoints {
    /// Endpoints with these addresses.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        Endpoints {
            in_flight: addrs.iter().map(|_| AtomicU32::new(0)).collect(),
            authorities: addrs.iter().map(authority).collect(),
            addrs,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The index of the endpoint to try first under `policy`; retries take
    /// the ones after it. `None` when empty.
    pub fn pick(&self, policy: LoadBalance) -> Option<usize> {
        match policy {
            LoadBalance::RoundRobin => self.next(),
            LoadBalance::LeastRequests => {
                let n = self.addrs.len();
                if n < 2 {
                    return self.next();
                }
                // Power of two choices (Mitzenmacher): two distinct random
                // endpoints, the less loaded wins. Nearly as good as
                // scanning all, without a hot spot when counts are stale.
                let a = rand::random_range(0..n);
                let b = (a + rand::random_range(1..n)) % n;
                let load = |i: usize| self.in_flight[i].load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    /// Counts a request on the endpoint at `index % len` until the
    /// returned guard is dropped.
    pub fn start_request(self: &Arc<Self>, index: usize) -> InFlight {
        let index = index % self.addrs.len();
        self.in_flight[index].fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoints: self.clone(),
            index,
        }
    }

    /// The address at `index % len` as a URI authority (`ip:port`,
    /// `[ip]:port` for IPv6). Panics when empty.
    pub fn authority(&self, index: usize) -> &Authority {
        &self.authorities[index % self.addrs.len()]
    }

    /// Requests in flight on the endpoint at `index`.
    pub fn in_flight(&self, index: usize) -> u32 {
        self.in_flight[index % self.addrs.len()].load(Ordering::Relaxed)
    }

    /// Every address.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The number of addresses.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether there are no ready endpoints (the proxy answers 503).
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The index of the next endpoint in round-robin order; retries take
    /// the ones after it (`(start + k) % len`). `None` when empty.
    pub fn next(&self) -> Option<usize> {
        if self.addrs.is_empty() {
            return None;
        }
        // Relaxed: the cursor only spreads load, it orders nothing.
        Some(self.cursor.fetch_add(1, Ordering::Relaxed) % self.addrs.len())
    }

    /// The address at `index % len` (`index` from [`Endpoints::next`] plus
    /// an attempt number). Panics when empty.
    pub fn get(&self, index: usize) -> SocketAddr {
        self.addrs[index % self.addrs.len()]
    }
}

/// An immutable map from Service backends to their endpoints; share it as
/// `Arc<UpstreamTable>`. The empty table (`default()`) knows no Service.
#[derive(Debug, Default)]
pub struct UpstreamTable {
    services: FastMap<ServiceBackend, Arc<Endpoints>>,
}

impl UpstreamTable {
    /// An empty table.
    pub fn new() -> Self {
        UpstreamTable::default()
    }

    /// Sets the endpoints of `backend` (replacing any it had).
    pub fn insert(&mut self, backend: ServiceBackend, addrs: Vec<SocketAddr>) {
        self.services
            .insert(backend, Arc::new(Endpoints::new(addrs)));
    }

    /// Builder form of [`UpstreamTable::insert`] for a numbered port, for
    /// tests and simple callers:
    /// `UpstreamTable::new().with("default", "web", 80, vec![addr])`.
    pub fn with(
        mut self,
        namespace: &str,
        service: &str,
        port: u16,
        addrs: Vec<SocketAddr>,
    ) -> Self {
        self.insert(
            ServiceBackend {
                namespace: namespace.into(),
                name: service.into(),
                port: ServicePort::Number(port),
            },
            addrs,
        );
        self
    }

    /// Builder form of [`UpstreamTable::insert`] for a named port.
    pub fn with_named(
        mut self,
        namespace: &str,
        service: &str,
        port: &str,
        addrs: Vec<SocketAddr>,
    ) -> Self {
        self.insert(
            ServiceBackend {
                namespace: namespace.into(),
                name: service.into(),
                port: ServicePort::Name(port.into()),
            },
            addrs,
        );
        self
    }

    /// The endpoints of `backend`; `None` when the table does not know it
    /// (the proxy answers 503 as for no ready endpoint).
    pub fn get(&self, backend: &ServiceBackend) -> Option<&Arc<Endpoints>> {
        self.services.get(backend)
    }

    /// The number of Service backends known.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no Service backend is known.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}
