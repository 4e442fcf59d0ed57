//! Applying changes: staged watcher batches become one rebuild of the
//! proxy's state and certificates, swapped in atomically; problems are
//! logged once when they appear (naming their object) and once when they
//! are gone, not on every reload.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use gangplank::source::DirChange;
use gangplank_ingress::config::{ObjectStore, Settings};
use gangplank_ingress::proxy::Proxy;
use gangplank_ingress::status::{IngressStatus, LbAddress};
use gangplank_ingress::tls::{CertResolver, CertStore, SecretRef};
use tracing::{info, warn};

/// What a rebuild leaves for the rest of the binary.
pub struct Applied {
    /// The certificates now served.
    pub certs: Arc<CertStore>,
    /// The Secrets served Ingresses name (cluster mode reads only these).
    pub secrets: BTreeSet<SecretRef>,
    /// Every Ingress and whether it is served, for the status writer.
    pub ingresses: Vec<IngressStatus>,
    /// The addresses to publish in Ingress status.
    pub publish: Vec<LbAddress>,
}

pub struct Reloader {
    store: ObjectStore,
    settings: Settings,
    proxy: Arc<Proxy>,
    resolver: Option<Arc<CertResolver>>,
    certs: Option<Arc<CertStore>>,
    reported: BTreeSet<String>,
    staged: usize,
}

impl Reloader {
    pub fn new(store: ObjectStore, settings: Settings, proxy: Arc<Proxy>) -> Self {
        Reloader {
            store,
            settings,
            proxy,
            resolver: None,
            certs: None,
            reported: BTreeSet::new(),
            staged: 0,
        }
    }

    /// Where new certificates go from now on.
    pub fn set_resolver(&mut self, resolver: Arc<CertResolver>) {
        self.resolver = Some(resolver);
    }

    /// Whether every one of `secrets` is in the store.
    pub fn has_secrets(&self, secrets: &BTreeSet<SecretRef>) -> bool {
        secrets.iter().all(|s| self.store.has_secret(s))
    }

    /// Takes a watcher batch into the object store (not yet served).
    pub fn stage(&mut self, change: DirChange) {
        self.staged += change.changed.len() + change.removed.len();
        for error in self.store.apply(change) {
            // Parse errors belong to a file version: report each as it
            // comes (the previous version of the object keeps serving).
            warn!("{error}");
        }
    }

    /// Rebuilds routes, endpoints and certificates from the store and
    /// serves them from the next request and handshake on.
    pub fn rebuild(&mut self) -> Applied {
        let start = Instant::now();
        let built = self.store.build(&self.settings, self.certs.as_deref());
        let now: BTreeSet<String> = built.errors.iter().cloned().collect();
        for error in now.difference(&self.reported) {
            warn!("{error}");
        }
        for fixed in self.reported.difference(&now) {
            info!("resolved: {fixed}");
        }
        let routes = built.state.routes.routes().count();
        let backends = built.state.upstreams.len();
        self.proxy.apply(built.state);
        if let Some(resolver) = &self.resolver {
            resolver.swap(built.certs.clone());
        }
        if let Some(metrics) = self.proxy.metrics() {
            metrics.reload(now.len());
        }
        info!(
            files = self.staged,
            routes,
            backends,
            problems = now.len(),
            elapsed_ms = start.elapsed().as_secs_f64() * 1e3,
            "configuration applied"
        );
        self.staged = 0;
        self.reported = now;
        self.certs = Some(built.certs.clone());
        Applied {
            certs: built.certs,
            secrets: built.secrets,
            ingresses: built.ingresses,
            publish: built.publish,
        }
    }
}
