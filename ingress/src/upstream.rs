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
//! Round-robin cursors live in the snapshot: a swap restarts them, which
//! costs nothing but a slightly uneven first round.

mod build;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::route::{ServiceBackend, ServicePort};

pub use build::{build_upstreams, UpstreamError, UpstreamErrorKind, SERVICE_NAME_LABEL};

/// The ready endpoints of one Service port, with a round-robin cursor.
#[derive(Debug, Default)]
pub struct Endpoints {
    /// Ready endpoint addresses (pod IP and target port), in a stable order.
    addrs: Vec<SocketAddr>,
    /// The next index [`Endpoints::next`] hands out, modulo `addrs.len()`.
    cursor: AtomicUsize,
}

impl Endpoints {
    /// Endpoints with these addresses.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        Endpoints {
            addrs,
            cursor: AtomicUsize::new(0),
        }
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
    services: HashMap<ServiceBackend, Endpoints>,
}

impl UpstreamTable {
    /// An empty table.
    pub fn new() -> Self {
        UpstreamTable::default()
    }

    /// Sets the endpoints of `backend` (replacing any it had).
    pub fn insert(&mut self, backend: ServiceBackend, addrs: Vec<SocketAddr>) {
        self.services.insert(backend, Endpoints::new(addrs));
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
    pub fn get(&self, backend: &ServiceBackend) -> Option<&Endpoints> {
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
