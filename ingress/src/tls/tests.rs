//! Certificate store and rustls configuration, with certificates issued by
//! rcgen from a test CA and handshakes run over in-memory buffers.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressRule, IngressSpec, IngressTLS};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::ByteString;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SignatureAlgorithm};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ServerConnection};

use super::*;

// ---------------------------------------------------------------- fixtures

/// Test CA (one per test binary: generating keys is the slow part).
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "gangplank test CA");
        let cert = params.self_signed(&key).expect("CA cert");
        Ca { cert, key }
    })
}

/// A fixed 2048-bit RSA key (ring cannot generate RSA keys).
const RSA_PKCS8_PEM: &str = include_str!("testdata/rsa2048.pk8.pem");

#[derive(Clone, Copy, Debug)]
enum KeyKind {
    EcP256,
    EcP384,
    Ed25519,
    Rsa,
}

impl KeyKind {
    fn key_pair(self) -> KeyPair {
        let alg: &'static SignatureAlgorithm = match self {
            KeyKind::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            KeyKind::Rsa => return KeyPair::from_pem(RSA_PKCS8_PEM).expect("RSA test key"),
        };
        KeyPair::generate_for(alg).expect("key generation")
    }
}

/// An issued certificate: PEM chain (leaf then CA) and PKCS#8 key.
struct Issued {
    crt: String,
    key: String,
    key_pkcs8_der: Vec<u8>,
}

/// `Leaf::new("cn").sans(..).key(..).not_after(..).issue()`
struct Leaf {
    cn: String,
    sans: Vec<String>,
    key: KeyKind,
    not_before: Option<(i32, u8, u8)>,
    not_after: Option<(i32, u8, u8)>,
}

impl Leaf {
    fn new(cn: &str) -> Self {
        Self {
            cn: cn.to_owned(),
            sans: vec![cn.to_owned()],
            key: KeyKind::EcP256,
            not_before: None,
            not_after: None,
        }
    }
    fn sans(mut self, sans: &[&str]) -> Self {
        self.sans = sans.iter().map(|s| s.to_string()).collect();
        self
    }
    fn key(mut self, key: KeyKind) -> Self {
        self.key = key;
        self
    }
    fn not_before(mut self, ymd: (i32, u8, u8)) -> Self {
        self.not_before = Some(ymd);
        self
    }
    fn not_after(mut self, ymd: (i32, u8, u8)) -> Self {
        self.not_after = Some(ymd);
        self
    }
    fn issue(self) -> Issued {
        let key = self.key.key_pair();
        let mut params = CertificateParams::new(self.sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, self.cn);
        if let Some((y, m, d)) = self.not_before {
            params.not_before = rcgen::date_time_ymd(y, m, d);
        }
        if let Some((y, m, d)) = self.not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let ca = ca();
        let cert = params
            .signed_by(&key, &ca.cert, &ca.key)
            .expect("sign leaf");
        Issued {
            crt: format!("{}{}", cert.pem(), ca.cert.pem()),
            key: key.serialize_pem(),
            key_pkcs8_der: key.serialize_der(),
        }
    }
}

/// Splits one DER TLV: (tag, contents, rest). Test inputs are well formed.
fn tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (len, hdr) = match der[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let k = usize::from(n & 0x7f);
            let len = der[2..2 + k]
                .iter()
                .fold(0, |a, b| (a << 8) | usize::from(*b));
            (len, 2 + k)
        }
    };
    (der[0], &der[hdr..hdr + len], &der[hdr + len..])
}

/// The PKCS#1 (RSA) or SEC1 (EC) key inside a PKCS#8 PrivateKeyInfo:
/// `SEQUENCE { version, algorithm, privateKey OCTET STRING, .. }`.
fn inner_key(pkcs8: &[u8]) -> Vec<u8> {
    let (_, info, _) = tlv(pkcs8);
    let (_, _, rest) = tlv(info); // version
    let (_, _, rest) = tlv(rest); // algorithm
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04, "privateKey OCTET STRING");
    key.to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, b)| a | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn secret(ns: &str, name: &str, type_: Option<&str>, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            namespace: Some(ns.to_owned()),
            name: Some(name.to_owned()),
            ..Default::default()
        },
        type_: type_.map(str::to_owned),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn tls_secret(ns: &str, name: &str, issued: &Issued) -> Secret {
    secret(
        ns,
        name,
        Some(SECRET_TYPE_TLS),
        &[("tls.crt", &issued.crt), ("tls.key", &issued.key)],
    )
}

/// `IngressB::new("ns", "name").tls(&["host"], "secret").rule("host").at(t)`
struct IngressB(Ingress);

impl IngressB {
    fn new(ns: &str, name: &str) -> Self {
        Self(Ingress {
            metadata: ObjectMeta {
                namespace: Some(ns.to_owned()),
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec: Some(IngressSpec::default()),
            ..Default::default()
        })
    }
    fn spec(&mut self) -> &mut IngressSpec {
        self.0.spec.as_mut().unwrap()
    }
    fn tls(mut self, hosts: &[&str], secret: &str) -> Self {
        self.spec()
            .tls
            .get_or_insert_with(Vec::new)
            .push(IngressTLS {
                hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
                secret_name: Some(secret.to_owned()),
            });
        self
    }
    fn tls_no_secret(mut self, hosts: &[&str]) -> Self {
        self.spec()
            .tls
            .get_or_insert_with(Vec::new)
            .push(IngressTLS {
                hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
                secret_name: None,
            });
        self
    }
    fn rule(mut self, host: &str) -> Self {
        self.spec()
            .rules
            .get_or_insert_with(Vec::new)
            .push(IngressRule {
                host: Some(host.to_owned()),
                http: None,
            });
        self
    }
    /// creationTimestamp, seconds since the epoch.
    fn at(mut self, secs: i64) -> Self {
        self.0.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
        ));
        self
    }
    fn build(self) -> Ingress {
        self.0
    }
}

fn build(ingresses: &[Ingress], secrets: &[Secret]) -> (CertStore, Vec<TlsError>) {
    CertStore::build(ingresses, secrets, None, None)
}

/// The served certificate's subject CN for an SNI.
fn served_cn(store: &CertStore, sni: Option<&str>) -> String {
    cn_of(&store.certificate_for(sni).cert[0])
}

fn cn_of(cert: &CertificateDer<'_>) -> String {
    x509::parse(cert)
        .expect("served certificate parses")
        .common_name
        .expect("served certificate has a CN")
}

fn ingress_ref(ns: &str, name: &str) -> Referrer {
    Referrer::Ingress {
        namespace: ns.to_owned(),
        name: name.to_owned(),
    }
}

/// Only the errors that replace a certificate with the default.
fn fatal(errors: &[TlsError]) -> Vec<&TlsError> {
    errors.iter().filter(|e| !e.served()).collect()
}

// ---------------------------------------------------------------- selection

#[test]
fn sni_exact_then_wildcard_then_default() {
    let exact = Leaf::new("a.example.com").issue();
    let wild = Leaf::new("*.example.com").issue();
    let ingresses = [
        IngressB::new("web", "wild")
            .tls(&["*.example.com"], "wild")
            .at(1)
            .build(),
        IngressB::new("web", "exact")
            .tls(&["a.example.com"], "exact")
            .at(2)
            .build(),
    ];
    let secrets = [
        tls_secret("web", "exact", &exact),
        tls_secret("web", "wild", &wild),
    ];
    let (store, errors) = build(&ingresses, &secrets);
    assert!(errors.is_empty(), "no errors expected, got {errors:?}");

    let cases = [
        (Some("a.example.com"), "a.example.com"),
        (Some("b.example.com"), "*.example.com"),
        (Some("A.EXAMPLE.COM"), "a.example.com"),
        (Some("B.Example.Com."), "*.example.com"),
        // One label only: neither the apex nor two labels.
        (Some("example.com"), DEFAULT_CERT_COMMON_NAME),
        (Some("x.b.example.com"), DEFAULT_CERT_COMMON_NAME),
        (Some(".example.com"), DEFAULT_CERT_COMMON_NAME),
        (Some("other.org"), DEFAULT_CERT_COMMON_NAME),
        (None, DEFAULT_CERT_COMMON_NAME),
    ];
    for (sni, want) in cases {
        assert_eq!(served_cn(&store, sni), want, "SNI {sni:?}");
    }
}

#[test]
fn has_tls_follows_listed_hosts_valid_or_not() {
    let good = Leaf::new("a.example.com").issue();
    let ingresses = [
        IngressB::new("web", "a")
            .tls(&["a.example.com"], "good")
            .build(),
        IngressB::new("web", "b")
            .tls(&["*.broken.test"], "missing")
            .rule("plain.test")
            .build(),
        IngressB::new("web", "c")
            .tls_no_secret(&["nosecret.test"])
            .build(),
    ];
    let (store, _) = build(&ingresses, &[tls_secret("web", "good", &good)]);
    for (host, want) in [
        ("a.example.com", true),
        ("A.Example.COM", true),
        ("b.example.com", false),
        ("x.broken.test", true),
        ("broken.test", false),
        ("y.x.broken.test", false),
        ("plain.test", false),
        ("nosecret.test", true),
    ] {
        assert_eq!(store.has_tls(host), want, "has_tls({host:?})");
    }
    assert_eq!(
        served_cn(&store, Some("nosecret.test")),
        DEFAULT_CERT_COMMON_NAME
    );
}

#[test]
fn exact_host_beats_wildcard_and_oldest_ingress_keeps_a_host() {
    let first = Leaf::new("first").sans(&["a.example.com"]).issue();
    let second = Leaf::new("second")
        .sans(&["a.example.com", "*.example.com"])
        .issue();
    let ingresses = [
        IngressB::new("b", "newer")
            .tls(&["a.example.com", "*.example.com"], "s")
            .at(200)
            .build(),
        IngressB::new("a", "older")
            .tls(&["a.example.com"], "s")
            .at(100)
            .build(),
    ];
    let secrets = [tls_secret("a", "s", &first), tls_secret("b", "s", &second)];
    let (store, errors) = build(&ingresses, &secrets);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(served_cn(&store, Some("a.example.com")), "first");
    assert_eq!(served_cn(&store, Some("z.example.com")), "second");
}

#[test]
fn broken_exact_host_falls_back_to_a_working_wildcard() {
    let wild = Leaf::new("*.example.com").issue();
    let ingresses = [
        IngressB::new("web", "exact")
            .tls(&["a.example.com"], "missing")
            .build(),
        IngressB::new("web", "wild")
            .tls(&["*.example.com"], "wild")
            .build(),
    ];
    let (store, errors) = build(&ingresses, &[tls_secret("web", "wild", &wild)]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(served_cn(&store, Some("a.example.com")), "*.example.com");
}

#[test]
fn certificate_names_cover_hosts_when_tls_lists_none() {
    // A spec.tls entry without hosts: the certificate's own SANs, wildcard
    // included, with the one-label rule.
    let wild = Leaf::new("wild")
        .sans(&["*.wild.test", "apex.test"])
        .issue();
    let mut ing = IngressB::new("web", "w").tls(&[], "wild").build();
    ing.spec.as_mut().unwrap().tls.as_mut().unwrap()[0].hosts = None;
    let (store, errors) = build(&[ing], &[tls_secret("web", "wild", &wild)]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(served_cn(&store, Some("x.wild.test")), "wild");
    assert_eq!(served_cn(&store, Some("APEX.test")), "wild");
    assert_eq!(
        served_cn(&store, Some("wild.test")),
        DEFAULT_CERT_COMMON_NAME
    );
    assert_eq!(
        served_cn(&store, Some("a.b.wild.test")),
        DEFAULT_CERT_COMMON_NAME
    );
    assert!(store.has_tls("x.wild.test"));
}

#[test]
fn rule_hosts_use_a_certificate_of_the_same_ingress_whose_san_covers_them() {
    let wild = Leaf::new("wild").sans(&["*.shop.test"]).issue();
    let ingresses = [
        IngressB::new("web", "shop")
            .tls(&["www.shop.test"], "wild")
            .rule("www.shop.test")
            .rule("api.shop.test")
            .rule("other.test")
            .build(),
        // Another Ingress's rule host is not covered by this certificate.
        IngressB::new("web", "else").rule("cart.shop.test").build(),
    ];
    let (store, errors) = build(&ingresses, &[tls_secret("web", "wild", &wild)]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(served_cn(&store, Some("api.shop.test")), "wild");
    assert!(store.has_tls("api.shop.test"));
    assert!(!store.has_tls("other.test"));
    assert!(!store.has_tls("cart.shop.test"));
}

#[test]
fn listed_host_beats_one_derived_from_a_certificate() {
    let derived = Leaf::new("derived").sans(&["a.example.com"]).issue();
    let listed = Leaf::new("listed").sans(&["a.example.com"]).issue();
    let mut older = IngressB::new("web", "older")
        .tls(&[], "derived")
        .at(1)
        .build();
    older.spec.as_mut().unwrap().tls.as_mut().unwrap()[0].hosts = None;
    let newer = IngressB::new("web", "newer")
        .tls(&["a.example.com"], "listed")
        .at(2)
        .build();
    let secrets = [
        tls_secret("web", "derived", &derived),
        tls_secret("web", "listed", &listed),
    ];
    let (store, _) = build(&[older, newer], &secrets);
    assert_eq!(served_cn(&store, Some("a.example.com")), "listed");
}

// ---------------------------------------------------------------- bad input

#[test]
fn each_bad_secret_is_named_and_its_host_gets_the_default() {
    let good = Leaf::new("good.test").issue();
    let other = Leaf::new("other.test").issue();
    let ok = |crt: &str, key: &str| vec![("tls.crt", crt.to_owned()), ("tls.key", key.to_owned())];
    type Case = (
        &'static str,
        Option<&'static str>,
        Vec<(&'static str, String)>,
        fn(&SecretProblem) -> bool,
    );
    let cases: Vec<Case> = vec![
        ("missing", None, vec![], |p| *p == SecretProblem::NotFound),
        ("opaque", Some("Opaque"), ok(&good.crt, &good.key), |p| {
            *p == SecretProblem::WrongType {
                found: "Opaque".into(),
            }
        }),
        ("untyped", None, ok(&good.crt, &good.key), |p| {
            *p == SecretProblem::WrongType {
                found: "Opaque".into(),
            }
        }),
        (
            "nokey",
            Some(SECRET_TYPE_TLS),
            vec![("tls.crt", good.crt.clone())],
            |p| *p == SecretProblem::MissingData { key: "tls.key" },
        ),
        ("emptycrt", Some(SECRET_TYPE_TLS), ok("", &good.key), |p| {
            *p == SecretProblem::MissingData { key: "tls.crt" }
        }),
        (
            "garbagecrt",
            Some(SECRET_TYPE_TLS),
            ok("hello", &good.key),
            |p| matches!(p, SecretProblem::BadCertificate { .. }),
        ),
        (
            "corruptcrt",
            Some(SECRET_TYPE_TLS),
            ok(&pem("CERTIFICATE", b"\x30\x03\x02\x01\x01"), &good.key),
            |p| matches!(p, SecretProblem::BadCertificate { .. }),
        ),
        (
            "garbagekey",
            Some(SECRET_TYPE_TLS),
            ok(
                &good.crt,
                "-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n",
            ),
            |p| matches!(p, SecretProblem::BadKey { .. }),
        ),
        (
            "nopemkey",
            Some(SECRET_TYPE_TLS),
            ok(&good.crt, "not a key"),
            |p| matches!(p, SecretProblem::BadKey { .. }),
        ),
        (
            "badderkey",
            Some(SECRET_TYPE_TLS),
            ok(&good.crt, &pem("PRIVATE KEY", b"\x30\x00")),
            |p| matches!(p, SecretProblem::BadKey { .. }),
        ),
        (
            "mismatch",
            Some(SECRET_TYPE_TLS),
            ok(&good.crt, &other.key),
            |p| *p == SecretProblem::KeyMismatch,
        ),
    ];

    for (name, type_, data, want) in cases {
        let data: Vec<(&str, &str)> = data.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut secrets = vec![tls_secret("web", "good", &good)];
        if name != "missing" {
            secrets.push(secret("web", name, type_, &data));
        }
        let ingresses = [
            IngressB::new("web", "fine")
                .tls(&["good.test"], "good")
                .build(),
            IngressB::new("web", "broken")
                .tls(&["bad.test"], name)
                .build(),
        ];
        let (store, errors) = build(&ingresses, &secrets);
        assert_eq!(
            errors.len(),
            1,
            "{name}: one error expected, got {errors:?}"
        );
        let e = &errors[0];
        assert_eq!(e.secret, SecretRef::new("web", name), "{name}: {e}");
        assert_eq!(e.referrer, ingress_ref("web", "broken"), "{name}: {e}");
        assert!(
            want(&e.problem),
            "{name}: unexpected problem {:?}",
            e.problem
        );
        assert!(!e.served(), "{name}: must not be served");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("web/{name}")) && msg.contains("Ingress web/broken"),
            "{name}: message names neither Secret nor Ingress: {msg}"
        );
        assert_eq!(
            served_cn(&store, Some("bad.test")),
            DEFAULT_CERT_COMMON_NAME,
            "{name}"
        );
        assert!(store.has_tls("bad.test"), "{name}: still a TLS host");
        assert_eq!(served_cn(&store, Some("good.test")), "good.test", "{name}");
    }
}

#[test]
fn key_of_the_same_type_but_another_certificate_is_a_mismatch() {
    for kind in [KeyKind::EcP256, KeyKind::Ed25519] {
        let a = Leaf::new("a.test").key(kind).issue();
        let b = Leaf::new("b.test").key(kind).issue();
        let s = secret(
            "ns",
            "s",
            Some(SECRET_TYPE_TLS),
            &[("tls.crt", &a.crt), ("tls.key", &b.key)],
        );
        let ing = IngressB::new("ns", "i").tls(&["a.test"], "s").build();
        let (_, errors) = build(&[ing], &[s]);
        assert_eq!(
            errors.iter().map(|e| &e.problem).collect::<Vec<_>>(),
            [&SecretProblem::KeyMismatch],
            "{kind:?}"
        );
    }
}

#[test]
fn chain_in_the_wrong_order_is_a_mismatch() {
    let leaf = Leaf::new("a.test").issue();
    let leaf_pem_end = leaf.crt.find("-----END CERTIFICATE-----\n").unwrap() + 26;
    let reversed = format!("{}{}", &leaf.crt[leaf_pem_end..], &leaf.crt[..leaf_pem_end]);
    let s = secret(
        "ns",
        "s",
        Some(SECRET_TYPE_TLS),
        &[("tls.crt", &reversed), ("tls.key", &leaf.key)],
    );
    let ing = IngressB::new("ns", "i").tls(&["a.test"], "s").build();
    let (_, errors) = build(&[ing], &[s]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].problem, SecretProblem::KeyMismatch);
}

#[test]
fn secret_in_another_namespace_is_not_found() {
    let cert = Leaf::new("a.test").issue();
    let ing = IngressB::new("team-a", "i").tls(&["a.test"], "s").build();
    let (store, errors) = build(&[ing], &[tls_secret("team-b", "s", &cert)]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].secret, SecretRef::new("team-a", "s"));
    assert_eq!(errors[0].problem, SecretProblem::NotFound);
    assert_eq!(served_cn(&store, Some("a.test")), DEFAULT_CERT_COMMON_NAME);
}

#[test]
fn one_error_per_referring_ingress() {
    let ingresses = [
        IngressB::new("ns", "one")
            .tls(&["a.test"], "gone")
            .tls(&["b.test"], "gone")
            .build(),
        IngressB::new("ns", "two").tls(&["c.test"], "gone").build(),
    ];
    let (_, errors) = build(&ingresses, &[]);
    let referrers: Vec<_> = errors.iter().map(|e| e.referrer.clone()).collect();
    assert_eq!(
        referrers,
        [ingress_ref("ns", "one"), ingress_ref("ns", "two")],
        "{errors:?}"
    );
}

#[test]
fn key_formats_pkcs8_pkcs1_sec1_and_key_types() {
    let cases: [(KeyKind, Option<&str>); 7] = [
        (KeyKind::EcP256, None),
        (KeyKind::EcP256, Some("EC PRIVATE KEY")),
        (KeyKind::EcP384, None),
        (KeyKind::EcP384, Some("EC PRIVATE KEY")),
        (KeyKind::Ed25519, None),
        (KeyKind::Rsa, None),
        (KeyKind::Rsa, Some("RSA PRIVATE KEY")),
    ];
    for (kind, inner_label) in cases {
        let cert = Leaf::new("k.test").key(kind).issue();
        let key = match inner_label {
            None => cert.key.clone(),
            Some(label) => pem(label, &inner_key(&cert.key_pkcs8_der)),
        };
        let s = secret(
            "ns",
            "s",
            Some(SECRET_TYPE_TLS),
            &[("tls.crt", &cert.crt), ("tls.key", &key)],
        );
        let ing = IngressB::new("ns", "i").tls(&["k.test"], "s").build();
        let (store, errors) = build(&[ing], &[s]);
        assert!(errors.is_empty(), "{kind:?} {inner_label:?}: {errors:?}");
        assert_eq!(
            served_cn(&store, Some("k.test")),
            "k.test",
            "{kind:?} {inner_label:?}"
        );
    }
}

#[test]
fn string_data_is_read_like_data() {
    let cert = Leaf::new("a.test").issue();
    let mut s = secret("ns", "s", Some(SECRET_TYPE_TLS), &[]);
    s.string_data = Some(BTreeMap::from([
        ("tls.crt".to_owned(), cert.crt.clone()),
        ("tls.key".to_owned(), cert.key.clone()),
    ]));
    let ing = IngressB::new("ns", "i").tls(&["a.test"], "s").build();
    let (store, errors) = build(&[ing], &[s]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(served_cn(&store, Some("a.test")), "a.test");
}

#[test]
fn expired_and_not_yet_valid_are_reported_but_served() {
    let expired = Leaf::new("old.test")
        .not_before((2019, 1, 1))
        .not_after((2020, 1, 1))
        .issue();
    let future = Leaf::new("new.test").not_before((2999, 1, 1)).issue();
    let ingresses = [
        IngressB::new("ns", "old").tls(&["old.test"], "old").build(),
        IngressB::new("ns", "new").tls(&["new.test"], "new").build(),
    ];
    let secrets = [
        tls_secret("ns", "old", &expired),
        tls_secret("ns", "new", &future),
    ];
    let (store, errors) = build(&ingresses, &secrets);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(TlsError::served), "{errors:?}");
    let problem_of = |name: &str| {
        let e = errors.iter().find(|e| e.secret.name == name);
        e.map(|e| e.problem.clone())
            .unwrap_or_else(|| panic!("no error for {name}: {errors:?}"))
    };
    assert_eq!(
        problem_of("old"),
        SecretProblem::Expired {
            subject: "old.test".into(),
            not_after: "2020-01-01T00:00:00Z".into()
        }
    );
    assert_eq!(
        problem_of("new"),
        SecretProblem::NotYetValid {
            subject: "new.test".into(),
            not_before: "2999-01-01T00:00:00Z".into()
        }
    );
    assert_eq!(served_cn(&store, Some("old.test")), "old.test");
    assert_eq!(served_cn(&store, Some("new.test")), "new.test");
}

#[test]
fn listed_host_the_certificate_does_not_name_is_reported_but_served() {
    let cert = Leaf::new("a.test").sans(&["a.test", "*.wild.test"]).issue();
    let ing = IngressB::new("ns", "i")
        .tls(&["a.test", "x.wild.test", "*.wild.test", "b.test"], "s")
        .build();
    let (store, errors) = build(&[ing], &[tls_secret("ns", "s", &cert)]);
    assert_eq!(
        errors.iter().map(|e| &e.problem).collect::<Vec<_>>(),
        [&SecretProblem::HostNotCovered {
            subject: "a.test".into(),
            host: "b.test".into()
        }],
    );
    assert!(fatal(&errors).is_empty());
    assert_eq!(served_cn(&store, Some("b.test")), "a.test");
}

#[test]
fn invalid_host_names_are_ignored() {
    let cert = Leaf::new("a.test").issue();
    let ing = IngressB::new("ns", "i")
        .tls(&["*", "a.*.test", "", "a.test"], "s")
        .build();
    let (store, _) = build(&[ing], &[tls_secret("ns", "s", &cert)]);
    assert_eq!(served_cn(&store, Some("a.test")), "a.test");
    assert!(!store.has_tls("x.test"));
}

// ---------------------------------------------------------------- default certificate

#[test]
fn generated_default_is_self_signed_named_and_stable_across_builds() {
    let (one, _) = build(&[], &[]);
    let (two, _) = build(&[], &[]);
    assert!(Arc::ptr_eq(
        one.default_certificate(),
        two.default_certificate()
    ));
    assert!(Arc::ptr_eq(
        one.default_certificate(),
        CertStore::empty().default_certificate()
    ));
    assert_eq!(one.default_source(), &DefaultSource::Generated);
    let info = x509::parse(&one.default_certificate().cert[0]).unwrap();
    assert_eq!(info.common_name.as_deref(), Some(DEFAULT_CERT_COMMON_NAME));
    assert_eq!(info.dns_names, [DEFAULT_CERT_DNS_NAME]);
}

#[test]
fn default_certificate_flag() {
    let dflt = Leaf::new("fallback.test").issue();
    let site = Leaf::new("a.test").issue();
    let flag: SecretRef = "ingress/fallback".parse().unwrap();
    let ing = IngressB::new("web", "i")
        .tls(&["a.test", "b.test"], "a")
        .build();
    let secrets = [
        tls_secret("ingress", "fallback", &dflt),
        tls_secret("web", "a", &site),
    ];
    let (store, errors) = CertStore::build([&ing], &secrets, Some(&flag), None);
    let warnings: Vec<_> = errors.iter().map(|e| &e.problem).collect();
    assert!(fatal(&errors).is_empty(), "{errors:?}");
    assert_eq!(warnings.len(), 1, "b.test is not named: {errors:?}");
    assert_eq!(store.default_source(), &DefaultSource::Secret(flag.clone()));
    assert_eq!(served_cn(&store, None), "fallback.test");
    assert_eq!(served_cn(&store, Some("unknown.test")), "fallback.test");
    assert_eq!(served_cn(&store, Some("a.test")), "a.test");

    // A broken flag Secret: reported against the flag, generated default.
    let missing: SecretRef = "ingress/nope".parse().unwrap();
    let (store, errors) = CertStore::build([&ing], &secrets, Some(&missing), None);
    let flag_errors: Vec<_> = fatal(&errors);
    assert_eq!(
        flag_errors
            .iter()
            .map(|e| (&e.secret, &e.referrer, &e.problem))
            .collect::<Vec<_>>(),
        [(
            &missing,
            &Referrer::DefaultCertificateFlag,
            &SecretProblem::NotFound
        )],
        "{errors:?}"
    );
    assert_eq!(store.default_source(), &DefaultSource::Generated);
    assert_eq!(served_cn(&store, None), DEFAULT_CERT_COMMON_NAME);
    assert_eq!(served_cn(&store, Some("a.test")), "a.test");
    let msg = flag_errors[0].to_string();
    assert!(
        msg.contains("--default-certificate") && msg.contains("ingress/nope"),
        "{msg}"
    );
}

#[test]
fn secret_ref_parsing() {
    assert_eq!("a/b".parse(), Ok(SecretRef::new("a", "b")));
    assert_eq!(SecretRef::new("a", "b").to_string(), "a/b");
    for bad in ["", "a", "/b", "a/", "a/b/c"] {
        assert!(bad.parse::<SecretRef>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn unchanged_secrets_are_not_parsed_again() {
    let a = Leaf::new("a.test").issue();
    let b = Leaf::new("b.test").issue();
    let ing = IngressB::new("ns", "i").tls(&["x.test"], "s").build();
    let (first, _) = build(std::slice::from_ref(&ing), &[tls_secret("ns", "s", &a)]);
    let (same, _) = CertStore::build([&ing], &[tls_secret("ns", "s", &a)], None, Some(&first));
    assert!(Arc::ptr_eq(
        first.certificate_for(Some("x.test")),
        same.certificate_for(Some("x.test"))
    ));
    let (rotated, _) = CertStore::build([&ing], &[tls_secret("ns", "s", &b)], None, Some(&same));
    assert_eq!(served_cn(&rotated, Some("x.test")), "b.test");
    // A Secret broken then fixed is re-parsed too.
    let (broken, errors) = CertStore::build([&ing], &[], None, Some(&rotated));
    assert_eq!(errors.len(), 1);
    let (fixed, _) = CertStore::build([&ing], &[tls_secret("ns", "s", &a)], None, Some(&broken));
    assert_eq!(served_cn(&fixed, Some("x.test")), "a.test");
}

// ---------------------------------------------------------------- handshakes

fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca().cert.der().clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Runs a handshake over in-memory buffers until both sides are idle
/// (TLS 1.3 tickets included).
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    name: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut c = ClientConnection::new(client.clone(), name)?;
    let mut s = ServerConnection::new(server.clone())?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            return Ok((c, s));
        }
    }
    panic!("handshake did not finish in 20 rounds");
}

fn site_store() -> Arc<CertStore> {
    let exact = Leaf::new("a.example.com").issue();
    let wild = Leaf::new("*.example.com").key(KeyKind::Rsa).issue();
    let ingresses = [
        IngressB::new("web", "a")
            .tls(&["a.example.com"], "a")
            .build(),
        IngressB::new("web", "w")
            .tls(&["*.example.com"], "w")
            .build(),
    ];
    let secrets = [
        tls_secret("web", "a", &exact),
        tls_secret("web", "w", &wild),
    ];
    let (store, errors) = build(&ingresses, &secrets);
    assert!(errors.is_empty(), "{errors:?}");
    Arc::new(store)
}

#[test]
fn handshake_serves_the_certificate_for_the_sni_with_alpn() {
    let resolver = Arc::new(CertResolver::new(site_store()));
    let server = Arc::new(server_config(resolver).unwrap());
    use rustls::version::{TLS12, TLS13};
    for (versions, want_version) in [
        (&[&TLS13][..], rustls::ProtocolVersion::TLSv1_3),
        (&[&TLS12][..], rustls::ProtocolVersion::TLSv1_2),
    ] {
        for (alpn, want_alpn) in [
            (&[&b"h2"[..], b"http/1.1"][..], Some(&b"h2"[..])),
            // Server preference, not the client's order.
            (&[&b"http/1.1"[..], b"h2"][..], Some(&b"h2"[..])),
            (&[&b"http/1.1"[..]][..], Some(&b"http/1.1"[..])),
            (&[][..], None),
        ] {
            let client = Arc::new(client_config(versions, alpn));
            for (sni, want_cn) in [
                ("a.example.com", "a.example.com"),
                ("b.example.com", "*.example.com"),
            ] {
                let ctx = format!("{want_version:?} alpn {alpn:?} sni {sni}");
                let (c, s) =
                    handshake(&server, &client, sni).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(c.protocol_version(), Some(want_version), "{ctx}");
                assert_eq!(c.alpn_protocol(), want_alpn, "{ctx}");
                assert_eq!(s.server_name(), Some(sni), "{ctx}");
                assert_eq!(cn_of(&c.peer_certificates().unwrap()[0]), want_cn, "{ctx}");
            }
        }
    }
}

#[test]
fn handshake_refuses_alpn_without_a_common_protocol() {
    let server = Arc::new(server_config(site_store()).unwrap());
    let client = Arc::new(client_config(&[&rustls::version::TLS13], &[b"spdy/3"]));
    let err = handshake(&server, &client, "a.example.com").err();
    assert_eq!(err, Some(rustls::Error::NoApplicationProtocol));
}

#[test]
fn handshake_resumes_sessions() {
    let server = Arc::new(server_config(site_store()).unwrap());
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = Arc::new(client_config(&[version], &[b"h2"]));
        let (c, _) = handshake(&server, &client, "a.example.com").unwrap();
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
        let (c, _) = handshake(&server, &client, "a.example.com").unwrap();
        assert_eq!(
            c.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{version:?}"
        );
    }
}

#[test]
fn swapped_store_applies_to_the_next_handshake() {
    let resolver = Arc::new(CertResolver::new(Arc::new(CertStore::empty())));
    let server = Arc::new(server_config(resolver.clone()).unwrap());
    let client = Arc::new(client_config(&[&rustls::version::TLS13], &[b"h2"]));
    let before = handshake(&server, &client, "a.example.com").err();
    assert!(
        matches!(before, Some(rustls::Error::InvalidCertificate(_))),
        "the default certificate must not verify as a.example.com: {before:?}"
    );
    resolver.swap(site_store());
    assert!(resolver.current().has_tls("a.example.com"));
    let (c, _) = handshake(&server, &client, "a.example.com").unwrap();
    assert_eq!(cn_of(&c.peer_certificates().unwrap()[0]), "a.example.com");
}

/// Accepts any certificate (signatures still checked): lets a client see
/// the default certificate, which nothing trusts.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[test]
fn handshake_without_sni_or_with_unknown_sni_gets_the_default() {
    let server = Arc::new(server_config(Arc::new(CertResolver::new(site_store()))).unwrap());
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    // An IP address as the server name: rustls sends no SNI.
    let client = Arc::new(client);
    let (c, s) = handshake(&server, &client, "198.18.0.1").unwrap();
    assert_eq!(s.server_name(), None);
    assert_eq!(
        cn_of(&c.peer_certificates().unwrap()[0]),
        DEFAULT_CERT_COMMON_NAME
    );
    let (c, _) = handshake(&server, &client, "unknown.test").unwrap();
    assert_eq!(
        cn_of(&c.peer_certificates().unwrap()[0]),
        DEFAULT_CERT_COMMON_NAME
    );
}

/// A hand-made ClientHello offering only `legacy_version` (no
/// supported_versions extension) with TLS 1.2 ECDHE suites.
fn raw_client_hello(legacy_version: [u8; 2]) -> Vec<u8> {
    let sni = b"a.example.com";
    let mut ext = Vec::new();
    let sni_len = u8::try_from(sni.len()).unwrap();
    // server_name: list(len) of {type 0, name(len)}
    ext.extend_from_slice(&[
        0x00,
        0x00,
        0x00,
        sni_len + 5,
        0x00,
        sni_len + 3,
        0x00,
        0x00,
        sni_len,
    ]);
    ext.extend_from_slice(sni);
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17]); // groups: P-256
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // ec_point_formats
    ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]); // ecdsa_secp256r1_sha256
    let mut body = legacy_version.to_vec();
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE-ECDSA/RSA-AES128-GCM
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[test]
fn tls_1_1_and_older_are_refused() {
    let server = Arc::new(server_config(site_store()).unwrap());
    let offer = |version: [u8; 2]| {
        let mut s = ServerConnection::new(server.clone()).unwrap();
        let hello = raw_client_hello(version);
        s.read_tls(&mut &hello[..]).unwrap();
        s.process_new_packets().map(|_| ())
    };
    // Control: the same hello as TLS 1.2 is accepted.
    assert_eq!(offer([0x03, 0x03]), Ok(()), "TLS 1.2 hello");
    for (name, version) in [
        ("TLS 1.1", [0x03, 0x02]),
        ("TLS 1.0", [0x03, 0x01]),
        ("SSL 3", [0x03, 0x00]),
    ] {
        let got = offer(version);
        assert!(
            matches!(got, Err(rustls::Error::PeerIncompatible(_))),
            "{name}: want PeerIncompatible, got {got:?}"
        );
    }
}
