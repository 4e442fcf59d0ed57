//! TLS termination: an immutable certificate store built from the served
//! Ingresses' `spec.tls` entries and their `kubernetes.io/tls` Secrets,
//! chosen by SNI, plus the rustls server configuration around it.
//!
//! The proxy builds a new [`CertStore`] on every change of Ingresses or
//! Secrets (passing the previous one so unchanged Secrets are not parsed
//! again) and hands it to [`CertResolver::swap`]; listeners keep their
//! [`rustls::ServerConfig`], whose resolver reads the current store once per
//! handshake.
//!
//! Selection, for an SNI host (ASCII case-insensitive, trailing dot ignored):
//! 1. an exact host from a `spec.tls[].hosts` entry;
//! 2. a wildcard `*.example.com` from `spec.tls[].hosts`, which covers
//!    exactly one extra label (`a.example.com`, not `example.com` nor
//!    `a.b.example.com`), as Ingress host rules do;
//! 3. the default certificate (`--default-certificate`, or a self-signed one
//!    generated once per process) for an unknown or absent SNI, or when
//!    the Secret for the host is missing or invalid.
//!
//! Hosts that `spec.tls` does not list explicitly are also covered by the
//! certificate's own subjectAltName DNS names (exact or wildcard) when the
//! `spec.tls` entry lists no hosts, and for the Ingress's own rule hosts
//! (ingress-nginx does the same): a listed host always wins over one that is
//! only derived from a certificate.
//!
//! Bad input never spoils the rest: each problem is a [`TlsError`] naming the
//! Secret and the Ingress (or flag) that referenced it, and only the hosts
//! of that Secret fall back to the default certificate.
//!
//! An expired (or not yet valid) certificate, or one whose names do not
//! cover a listed host, is reported but still served ([`TlsError::served`]):
//! the self-signed default would fail verification just as surely, and it
//! would hide which certificate the operator configured; clients with a
//! skewed clock, and clients told to ignore expiry, keep working, and a
//! renewal replaces it within a reload (ingress-nginx also serves them).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use tracing::{debug, warn};

mod x509;

#[cfg(test)]
mod tests;

/// The Secret type that carries a certificate and key
/// (<https://kubernetes.io/docs/concepts/configuration/secret/#tls-secrets>).
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";
/// Secret data key of the PEM certificate chain, server certificate first.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Secret data key of the PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";
/// Subject common name of the generated default certificate.
pub const DEFAULT_CERT_COMMON_NAME: &str = "gangplank-ingress default certificate";
/// The only subjectAltName of the generated default certificate: `.invalid`
/// (RFC 2606) never resolves, so no client can mistake it for a real host.
pub const DEFAULT_CERT_DNS_NAME: &str = "gangplank-ingress.invalid";
/// ALPN protocols offered, in the server's order of preference.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// Stateful TLS session cache entries (TLS 1.2 session IDs; TLS 1.3 uses
/// stateless tickets).
pub const SESSION_CACHE_SIZE: usize = 16 * 1024;

/// A Secret, by namespace and name: the `--default-certificate` flag value
/// (`NAMESPACE/NAME`) and the subject of every [`TlsError`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
}

impl SecretRef {
    /// A reference to `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `--default-certificate` is not of the form `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not NAMESPACE/NAME")]
pub struct InvalidSecretRef(pub String);

impl FromStr for SecretRef {
    type Err = InvalidSecretRef;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        gangplank::source::split_namespaced(s)
            .map(|(ns, name)| Self::new(ns, name))
            .ok_or_else(|| InvalidSecretRef(s.to_owned()))
    }
}

/// What referenced a TLS Secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Referrer {
    /// A `spec.tls` entry of this Ingress.
    Ingress {
        /// Namespace of the Ingress (also the Secret's).
        namespace: String,
        /// Name of the Ingress.
        name: String,
    },
    /// The `--default-certificate` flag.
    DefaultCertificateFlag,
}

impl fmt::Display for Referrer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ingress { namespace, name } => write!(f, "Ingress {namespace}/{name}"),
            Self::DefaultCertificateFlag => f.write_str("--default-certificate"),
        }
    }
}

/// A TLS Secret that could not be used as it is, with who referenced it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TLS Secret {secret} (referenced by {referrer}): {problem}")]
pub struct TlsError {
    /// The Secret.
    pub secret: SecretRef,
    /// The Ingress (or flag) that referenced it.
    pub referrer: Referrer,
    /// What is wrong with it.
    pub problem: SecretProblem,
}

impl TlsError {
    /// Whether the certificate is served anyway (a warning: expired, not yet
    /// valid, or not naming a listed host) rather than replaced by the
    /// default certificate.
    pub fn served(&self) -> bool {
        self.problem.served()
    }
}

/// What is wrong with a TLS Secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SecretProblem {
    /// There is no Secret of that name in the namespace.
    #[error("Secret not found")]
    NotFound,
    /// The Secret is not of type `kubernetes.io/tls`.
    #[error("Secret type is {found:?}, want \"kubernetes.io/tls\"")]
    WrongType {
        /// The Secret's type (`Opaque` when unset).
        found: String,
    },
    /// `tls.crt` or `tls.key` is missing or empty.
    #[error("data key {key:?} is missing or empty")]
    MissingData {
        /// The missing data key.
        key: &'static str,
    },
    /// `tls.crt` holds no usable certificate.
    #[error("tls.crt: {reason}")]
    BadCertificate {
        /// Why.
        reason: String,
    },
    /// `tls.key` holds no usable private key.
    #[error("tls.key: {reason}")]
    BadKey {
        /// Why.
        reason: String,
    },
    /// The private key is not the one of the first certificate in `tls.crt`.
    #[error("tls.key does not match the public key of the first certificate in tls.crt")]
    KeyMismatch,
    /// The certificate's notAfter has passed (still served).
    #[error("certificate {subject} expired at {not_after} (served anyway)")]
    Expired {
        /// Subject common name or first DNS name.
        subject: String,
        /// notAfter, RFC 3339.
        not_after: String,
    },
    /// The certificate's notBefore is in the future (still served).
    #[error("certificate {subject} is not valid before {not_before} (served anyway)")]
    NotYetValid {
        /// Subject common name or first DNS name.
        subject: String,
        /// notBefore, RFC 3339.
        not_before: String,
    },
    /// A host listed in `spec.tls[].hosts` is not among the certificate's
    /// subjectAltName DNS names (still served for it).
    #[error("certificate {subject} does not name host {host:?} (served anyway)")]
    HostNotCovered {
        /// Subject common name or first DNS name.
        subject: String,
        /// The listed host.
        host: String,
    },
}

impl SecretProblem {
    /// See [`TlsError::served`].
    pub fn served(&self) -> bool {
        matches!(
            self,
            Self::Expired { .. } | Self::NotYetValid { .. } | Self::HostNotCovered { .. }
        )
    }
}

/// A parsed, key-checked certificate chain.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// `None` when our minimal reader cannot read a certificate that
    /// webpki accepted: served, without expiry or name checks.
    info: Option<x509::CertInfo>,
}

impl Loaded {
    fn subject(&self) -> String {
        self.info
            .as_ref()
            .and_then(|i| {
                i.common_name
                    .clone()
                    .or_else(|| i.dns_names.first().cloned())
            })
            .unwrap_or_else(|| "(unnamed)".to_owned())
    }

    fn covers(&self, host: &str) -> bool {
        self.info
            .as_ref()
            .is_some_and(|i| i.dns_names.iter().any(|n| name_matches(n, host)))
    }
}

/// A Secret's bytes and what they parsed to, kept to skip re-parsing an
/// unchanged Secret on the next build.
#[derive(Debug)]
struct Cached {
    crt: Vec<u8>,
    key: Vec<u8>,
    result: Result<Arc<Loaded>, SecretProblem>,
}

/// What serves one host name.
#[derive(Debug, Clone)]
struct HostEntry {
    /// `None`: the Secret is missing or invalid (or the entry names no
    /// Secret), so the default certificate is served.
    cert: Option<Arc<CertifiedKey>>,
    /// Listed in `spec.tls[].hosts` (beats a name derived from a certificate).
    listed: bool,
}

/// Where the default certificate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultSource {
    /// The `--default-certificate` Secret.
    Secret(SecretRef),
    /// Generated and self-signed, once per process.
    Generated,
}

/// Certificates by host name, immutable; build a new one on every change.
pub struct CertStore {
    /// Exact host → certificate.
    exact: HashMap<String, HostEntry>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, HostEntry>,
    default: Arc<CertifiedKey>,
    default_source: DefaultSource,
    cache: HashMap<SecretRef, Cached>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut exact: Vec<_> = self.exact.keys().collect();
        exact.sort();
        let mut wildcard: Vec<_> = self.wildcard.keys().map(|k| format!("*.{k}")).collect();
        wildcard.sort();
        f.debug_struct("CertStore")
            .field("exact", &exact)
            .field("wildcard", &wildcard)
            .field("default", &self.default_source)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// A store with no hosts, serving the generated default certificate
    /// (what a listener uses before the first build).
    pub fn empty() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: generated_default(),
            default_source: DefaultSource::Generated,
            cache: HashMap::new(),
        }
    }

    /// Builds the store from the Ingresses this proxy serves (already
    /// filtered by class) and the known Secrets (any namespace, any type).
    ///
    /// `default_certificate` is the `--default-certificate` Secret;
    /// `previous` is the store being replaced, whose parsed Secrets are
    /// reused when their bytes did not change. Every problem found is
    /// returned (for the caller to log or publish); none stops the build.
    pub fn build<'a>(
        ingresses: impl IntoIterator<Item = &'a Ingress>,
        secrets: impl IntoIterator<Item = &'a Secret>,
        default_certificate: Option<&SecretRef>,
        previous: Option<&CertStore>,
    ) -> (CertStore, Vec<TlsError>) {
        let secrets: HashMap<SecretRef, &Secret> = secrets
            .into_iter()
            .filter_map(|s| {
                let name = s.metadata.name.clone()?;
                let ns = s.metadata.namespace.clone().unwrap_or_else(default_ns);
                Some((SecretRef::new(ns, name), s))
            })
            .collect();
        let mut b = Builder {
            secrets,
            previous: previous.map(|p| &p.cache),
            provider: provider(),
            now: unix_now(),
            cache: HashMap::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            errors: Vec::new(),
            reported: HashSet::new(),
        };

        let (default, default_source) = match default_certificate {
            Some(r) => match b.load(r, &Referrer::DefaultCertificateFlag) {
                Some(loaded) => (loaded.key.clone(), DefaultSource::Secret(r.clone())),
                None => (generated_default(), DefaultSource::Generated),
            },
            None => (generated_default(), DefaultSource::Generated),
        };

        // Oldest first, as Kubernetes controllers break ties: the first
        // Ingress to list a host keeps it.
        let mut ingresses: Vec<&Ingress> = ingresses.into_iter().collect();
        ingresses.sort_by(|a, b| {
            let key = |i: &'a Ingress| {
                (
                    i.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    i.metadata.namespace.clone(),
                    i.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        for ingress in ingresses {
            b.add_ingress(ingress);
        }

        debug!(
            exact = b.exact.len(),
            wildcard = b.wildcard.len(),
            errors = b.errors.len(),
            ?default_source,
            "certificate store built"
        );
        let store = CertStore {
            exact: b.exact,
            wildcard: b.wildcard,
            default,
            default_source,
            cache: b.cache,
        };
        (store, b.errors)
    }

    /// The certificate for an SNI host name (`None`: the client sent none).
    pub fn certificate_for(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        sni.and_then(|host| self.lookup(&normalize(host)))
            .unwrap_or(&self.default)
    }

    /// Whether a `spec.tls` entry covers `host` (exactly or by wildcard),
    /// whether or not its certificate is usable: such hosts get the
    /// HTTP→HTTPS redirect.
    pub fn has_tls(&self, host: &str) -> bool {
        let host = normalize(host);
        self.exact.contains_key(host.as_ref())
            || parent(&host).is_some_and(|p| self.wildcard.contains_key(p))
    }

    /// The certificate served for unknown or absent SNI.
    pub fn default_certificate(&self) -> &Arc<CertifiedKey> {
        &self.default
    }

    /// Where the default certificate came from.
    pub fn default_source(&self) -> &DefaultSource {
        &self.default_source
    }

    fn lookup(&self, host: &str) -> Option<&Arc<CertifiedKey>> {
        // An exact host whose Secret is broken still lets a working
        // wildcard serve it: a valid certificate beats the default.
        let exact = self.exact.get(host).and_then(|e| e.cert.as_ref());
        exact.or_else(|| {
            self.wildcard
                .get(parent(host)?)
                .and_then(|e| e.cert.as_ref())
        })
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certificate_for(hello.server_name()).clone())
    }
}

/// The resolver listeners keep: reads the current [`CertStore`] once per
/// handshake, so a new store applies to the next handshake without
/// touching listeners or open connections.
#[derive(Debug)]
pub struct CertResolver {
    // A read lock per handshake costs an uncontended atomic; swaps are rare.
    current: RwLock<Arc<CertStore>>,
}

impl CertResolver {
    /// A resolver serving `store`.
    pub fn new(store: Arc<CertStore>) -> Self {
        Self {
            current: RwLock::new(store),
        }
    }

    /// Serves `store` from the next handshake on.
    pub fn swap(&self, store: Arc<CertStore>) {
        // A poisoned lock still holds a whole Arc: nothing to repair.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = store;
    }

    /// The store being served (pass it as `previous` to the next build, and
    /// ask it [`CertStore::has_tls`]).
    pub fn current(&self) -> Arc<CertStore> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().resolve(hello)
    }
}

/// The rustls configuration for the HTTPS listeners: TLS 1.3 and 1.2 only,
/// ALPN `h2` then `http/1.1` (server preference; a client that offers ALPN
/// but neither is refused, per RFC 7301), resumption by session cache and
/// by stateless tickets (keys rotated by rustls every 6 hours), no 0-RTT
/// (replayable), certificates from `resolver` (a [`CertResolver`] so that
/// stores can be swapped).
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(config)
}

/// The crypto provider used for keys and handshakes (ring: no C toolchain).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The self-signed default certificate, generated on first use and then
/// reused by every store of this process (so rebuilds do not change it).
fn generated_default() -> Arc<CertifiedKey> {
    static GENERATED: OnceLock<Arc<CertifiedKey>> = OnceLock::new();
    GENERATED
        .get_or_init(|| {
            // Failing here means ring cannot generate a P-256 key, i.e. no
            // usable randomness: no TLS can work at all.
            generate_self_signed().expect("generating the default certificate (P-256 with ring)")
        })
        .clone()
}

fn generate_self_signed() -> Result<Arc<CertifiedKey>, Box<dyn std::error::Error>> {
    let key_pair = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![DEFAULT_CERT_DNS_NAME.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, DEFAULT_CERT_COMMON_NAME);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "gangplank");
    let cert = params.self_signed(&key_pair)?;
    let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let signing_key = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

/// One build's state.
struct Builder<'a> {
    secrets: HashMap<SecretRef, &'a Secret>,
    previous: Option<&'a HashMap<SecretRef, Cached>>,
    provider: Arc<CryptoProvider>,
    now: i64,
    cache: HashMap<SecretRef, Cached>,
    exact: HashMap<String, HostEntry>,
    wildcard: HashMap<String, HostEntry>,
    errors: Vec<TlsError>,
    reported: HashSet<(SecretRef, Referrer, SecretProblem)>,
}

impl Builder<'_> {
    fn report(&mut self, secret: &SecretRef, referrer: &Referrer, problem: SecretProblem) {
        if self
            .reported
            .insert((secret.clone(), referrer.clone(), problem.clone()))
        {
            self.errors.push(TlsError {
                secret: secret.clone(),
                referrer: referrer.clone(),
                problem,
            });
        }
    }

    /// Loads a Secret, reporting its problems (also validity warnings) as
    /// referenced by `referrer`; `None` if it cannot be served.
    fn load(&mut self, secret_ref: &SecretRef, referrer: &Referrer) -> Option<Arc<Loaded>> {
        let result = self.parse(secret_ref);
        let loaded = match result {
            Ok(loaded) => loaded,
            Err(problem) => {
                self.report(secret_ref, referrer, problem);
                return None;
            }
        };
        if let Some(info) = &loaded.info {
            if self.now > info.not_after {
                let problem = SecretProblem::Expired {
                    subject: loaded.subject(),
                    not_after: x509::rfc3339(info.not_after),
                };
                self.report(secret_ref, referrer, problem);
            } else if self.now < info.not_before {
                let problem = SecretProblem::NotYetValid {
                    subject: loaded.subject(),
                    not_before: x509::rfc3339(info.not_before),
                };
                self.report(secret_ref, referrer, problem);
            }
        }
        Some(loaded)
    }

    fn parse(&mut self, secret_ref: &SecretRef) -> Result<Arc<Loaded>, SecretProblem> {
        if let Some(cached) = self.cache.get(secret_ref) {
            return cached.result.clone();
        }
        let secret = self
            .secrets
            .get(secret_ref)
            .ok_or(SecretProblem::NotFound)?;
        let found = secret.type_.as_deref().unwrap_or("Opaque");
        if found != SECRET_TYPE_TLS {
            return Err(SecretProblem::WrongType {
                found: found.to_owned(),
            });
        }
        let crt = secret_data(secret, TLS_CERT_KEY)
            .ok_or(SecretProblem::MissingData { key: TLS_CERT_KEY })?;
        let key = secret_data(secret, TLS_PRIVATE_KEY_KEY).ok_or(SecretProblem::MissingData {
            key: TLS_PRIVATE_KEY_KEY,
        })?;
        let reused = self
            .previous
            .and_then(|p| p.get(secret_ref))
            .filter(|c| c.crt == crt && c.key == key)
            .map(|c| c.result.clone());
        let result = reused.unwrap_or_else(|| load_pem(crt, key, &self.provider).map(Arc::new));
        self.cache.insert(
            secret_ref.clone(),
            Cached {
                crt: crt.to_vec(),
                key: key.to_vec(),
                result: result.clone(),
            },
        );
        result
    }

    fn add_ingress(&mut self, ingress: &Ingress) {
        let Some(name) = ingress.metadata.name.clone() else {
            return;
        };
        let namespace = ingress
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(default_ns);
        let Some(spec) = &ingress.spec else { return };
        let referrer = Referrer::Ingress {
            namespace: namespace.clone(),
            name,
        };
        let mut loaded_here = Vec::new();
        let mut listed_here = Vec::new();
        for tls in spec.tls.iter().flatten() {
            // `secretName` is optional ("TLS routing based on SNI alone"):
            // the hosts are TLS hosts served with the default certificate.
            let loaded = tls.secret_name.as_ref().and_then(|secret| {
                let secret_ref = SecretRef::new(namespace.clone(), secret.clone());
                let loaded = self.load(&secret_ref, &referrer)?;
                for host in tls.hosts.iter().flatten() {
                    let host = normalize(host);
                    if loaded.info.is_some() && !loaded.covers(&host) {
                        let problem = SecretProblem::HostNotCovered {
                            subject: loaded.subject(),
                            host: host.into_owned(),
                        };
                        self.report(&secret_ref, &referrer, problem);
                    }
                }
                Some(loaded)
            });
            let cert = loaded.as_ref().map(|l| l.key.clone());
            match tls.hosts.as_deref() {
                Some(hosts) if !hosts.is_empty() => {
                    for host in hosts {
                        self.insert(host, cert.clone(), true);
                        listed_here.push(normalize(host).into_owned());
                    }
                }
                // No hosts listed: the certificate's own names.
                _ => {
                    for name in loaded
                        .iter()
                        .flat_map(|l| l.info.iter())
                        .flat_map(|i| &i.dns_names)
                    {
                        self.insert(name, cert.clone(), false);
                    }
                }
            }
            loaded_here.extend(loaded);
        }
        // Rule hosts that no entry lists get a certificate of this Ingress
        // whose own names cover them.
        for rule in spec.rules.iter().flatten() {
            let Some(host) = rule.host.as_deref() else {
                continue;
            };
            let host = normalize(host);
            if listed_here.iter().any(|l| name_matches(l, &host)) {
                continue;
            }
            if let Some(loaded) = loaded_here.iter().find(|l| l.covers(&host)) {
                self.insert(&host, Some(loaded.key.clone()), false);
            }
        }
    }

    fn insert(&mut self, host: &str, cert: Option<Arc<CertifiedKey>>, listed: bool) {
        let host = normalize(host);
        let (map, key) = match host.strip_prefix("*.") {
            Some(rest) if !rest.is_empty() && !rest.contains('*') => (&mut self.wildcard, rest),
            None if !host.is_empty() && !host.contains('*') => (&mut self.exact, host.as_ref()),
            _ => {
                // The API server rejects these; from a manifests directory
                // they may still come.
                warn!(%host, "ignoring invalid TLS host name");
                return;
            }
        };
        let new = HostEntry { cert, listed };
        match map.get_mut(key) {
            None => {
                map.insert(key.to_owned(), new);
            }
            // A listed host beats a derived one; otherwise the first
            // (oldest) keeps it, unless only the newcomer is usable.
            Some(old) => {
                if (new.listed && !old.listed)
                    || (new.listed == old.listed && old.cert.is_none() && new.cert.is_some())
                {
                    *old = new;
                }
            }
        }
    }
}

/// Parses a PEM chain and key and checks that they belong together.
fn load_pem(crt: &[u8], key: &[u8], provider: &CryptoProvider) -> Result<Loaded, SecretProblem> {
    let bad_cert = |reason: String| SecretProblem::BadCertificate { reason };
    let bad_key = |reason: String| SecretProblem::BadKey { reason };
    let chain = rustls_pemfile::certs(&mut &crt[..])
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|e| bad_cert(format!("invalid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad_cert("no CERTIFICATE PEM block".to_owned()));
    }
    let key = rustls_pemfile::private_key(&mut &key[..])
        .map_err(|e| bad_key(format!("invalid PEM: {e}")))?
        .ok_or_else(|| {
            bad_key(
                "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY PEM block \
                 (encrypted keys are not supported)"
                    .to_owned(),
            )
        })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad_key(format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // ring exposes the public key of every key type it loads; were one
        // not to, the handshake itself would still fail on a mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(SecretProblem::KeyMismatch);
        }
        Err(e) => return Err(bad_cert(format!("invalid certificate: {e}"))),
    }
    let info = match x509::parse(&certified.cert[0]) {
        Ok(info) => Some(info),
        Err(e) => {
            debug!(
                error = e.0,
                "certificate accepted by webpki but not read here: no expiry or name checks"
            );
            None
        }
    };
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

/// A Secret data value: `stringData` (manifests may use it; the API server
/// merges it into `data` on write) before `data`; empty counts as missing.
fn secret_data<'s>(secret: &'s Secret, key: &str) -> Option<&'s [u8]> {
    let string = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.as_bytes());
    let data = || {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.as_slice())
    };
    string.or_else(data).filter(|b| !b.is_empty())
}

fn default_ns() -> String {
    "default".to_owned()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Host names compare ASCII case-insensitively (RFC 4343) and without a
/// trailing root dot.
fn normalize(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    }
}

/// `a.example.com` → `example.com`; `None` when there is no parent or the
/// first label is empty.
fn parent(host: &str) -> Option<&str> {
    match host.split_once('.') {
        Some((label, rest)) if !label.is_empty() && !rest.is_empty() => Some(rest),
        _ => None,
    }
}

/// Whether a (normalized) name, exact or `*.` wildcard, covers a
/// (normalized) host; the wildcard takes exactly one label (RFC 6125 §6.4.3
/// as browsers apply it, and Ingress host rules).
fn name_matches(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(suffix) => parent(host) == Some(suffix),
        None => name == host,
    }
}
