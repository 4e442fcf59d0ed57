//! kube-proxy's chain names: a base32 SHA-256 prefix of the service port
//! (and endpoint), so that names are stable across restarts and fit the
//! kernels' limits.

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use super::ProxiedPort;

fn hash(input: &str, len: usize) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut encoded = BASE32.encode(&digest);
    encoded.truncate(len);
    encoded
}

/// iptables: `portProtoHash(servicePortName, protocol)`, 16 characters.
fn port_proto_hash(port: &ProxiedPort) -> String {
    hash(&format!("{}{}", port.port_name_string(), port.proto()), 16)
}

/// `KUBE-SVC-<hash>`.
pub fn iptables_svc(port: &ProxiedPort) -> String {
    format!("KUBE-SVC-{}", port_proto_hash(port))
}

/// `KUBE-EXT-<hash>`: the NodePort/external entry chain.
pub fn iptables_ext(port: &ProxiedPort) -> String {
    format!("KUBE-EXT-{}", port_proto_hash(port))
}

/// `KUBE-SEP-<hash>` of one endpoint (`ip:port`).
pub fn iptables_sep(port: &ProxiedPort, endpoint: &str) -> String {
    let input = format!("{}{}{}", port.port_name_string(), port.proto(), endpoint);
    format!("KUBE-SEP-{}", hash(&input, 16))
}

/// nftables: the longest chain name kube-proxy writes (`chainNameMaxLength`).
const NFT_CHAIN_NAME_MAX: usize = 200;

/// nftables: `hashAndTruncate`: 8 hash characters, a dash, the name.
fn hash_and_truncate(name: &str) -> String {
    let mut out = format!("{}-{}", hash(name, 8), name);
    if out.len() > NFT_CHAIN_NAME_MAX {
        out.truncate(NFT_CHAIN_NAME_MAX - 3);
        out.push_str("...");
    }
    out
}

/// `ns/name/proto/portname`, the base of a service port's nftables chains.
fn nft_base(port: &ProxiedPort) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        port.service.namespace,
        port.service.name,
        port.proto(),
        port.port_name
    ))
}

/// `service-<hash>-ns/name/proto/portname`.
pub fn nft_service(port: &ProxiedPort) -> String {
    format!("service-{}", nft_base(port))
}

/// `external-<hash>-ns/name/proto/portname`.
pub fn nft_external(port: &ProxiedPort) -> String {
    format!("external-{}", nft_base(port))
}

/// `endpoint-<hash>-ns/name/proto/portname__ip/port`.
pub fn nft_endpoint(port: &ProxiedPort, endpoint: std::net::SocketAddrV4) -> String {
    let name = format!(
        "{}/{}/{}/{}__{}/{}",
        port.service.namespace,
        port.service.name,
        port.proto(),
        port.port_name,
        endpoint.ip(),
        endpoint.port()
    );
    format!("endpoint-{}", hash_and_truncate(&name))
}
