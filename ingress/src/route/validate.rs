//! Field validation, at least as strict as the API server's
//! (`pkg/apis/networking/validation/validation.go`, Kubernetes 1.33): the
//! manifests source has no API server in front of it.

/// Substrings the API server rejects in Exact and Prefix paths
/// (`invalidPathSequences`).
const INVALID_PATH_SEQUENCES: [&str; 5] = ["//", "/./", "/../", "%2f", "%2F"];

/// Suffixes the API server rejects in Exact and Prefix paths
/// (`invalidPathSuffixes`).
const INVALID_PATH_SUFFIXES: [&str; 2] = ["/..", "/."];

/// Characters with a meaning in regexes (PCRE, as ingress-nginx uses) that
/// are not common in literal paths: worth a warning, since Ingress v1 paths
/// are literal.
const REGEX_METACHARACTERS: &[char] =
    &['^', '$', '*', '+', '(', ')', '[', ']', '{', '}', '|', '\\'];

/// Why a path is invalid, if it is. Applied to every path type: we match
/// ImplementationSpecific as Prefix, so it gets Prefix's rules too.
pub(super) fn path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be an absolute path (start with '/')".to_owned());
    }
    for seq in INVALID_PATH_SEQUENCES {
        if path.contains(seq) {
            return Err(format!("must not contain '{seq}'"));
        }
    }
    for suffix in INVALID_PATH_SUFFIXES {
        if path.ends_with(suffix) {
            return Err(format!("cannot end with '{suffix}'"));
        }
    }
    // Beyond the API server: a request path never contains these (the query
    // and fragment are cut off, whitespace and controls are not allowed in a
    // request target), so such a rule could never match.
    if let Some(c) = path
        .chars()
        .find(|&c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "must not contain {c:?} (no request path can contain it)"
        ));
    }
    Ok(())
}

/// Whether a (valid) path looks like a regex.
pub(super) fn looks_like_regex(path: &str) -> bool {
    path.contains(REGEX_METACHARACTERS)
}

/// Why a rule host is invalid, if it is: a lowercase DNS-1123 subdomain, or
/// `*.` followed by one; not an IP address.
pub(super) fn host(host: &str) -> Result<(), &'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err("a wildcard must be '*.' followed by a DNS name");
    }
    if host.len() > 253 {
        return Err("must be no more than 253 characters");
    }
    if is_ipv4(name) || name.contains(':') {
        return Err("must be a DNS name, not an IP address");
    }
    if !name.split('.').all(is_dns1123_label_chars) {
        return Err(
            "must be a lowercase RFC 1123 subdomain: labels of 'a-z', '0-9' and '-', starting and ending with an alphanumeric character",
        );
    }
    Ok(())
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` (the API server's subdomain regex does not
/// limit label length).
fn is_dns1123_label_chars(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dotted-quad IPv4, leading zeros allowed (as `netutils.ParseIPSloppy`).
fn is_ipv4(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| n <= 255)
        })
}

/// Why a Service name is invalid, if it is: a DNS-1035 label
/// (`apivalidation.ValidateServiceName`).
pub(super) fn service_name(name: &str) -> Result<(), &'static str> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Err("service name is required");
    }
    if b.len() > 63 {
        return Err("service name must be no more than 63 characters");
    }
    let ok = b[0].is_ascii_lowercase()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[b.len() - 1] != b'-';
    if !ok {
        return Err("service name must be a DNS-1035 label: 'a-z', '0-9' and '-', starting with a letter and ending with an alphanumeric character");
    }
    Ok(())
}

/// Why a port name is invalid, if it is: an IANA_SVC_NAME
/// (`validation.IsValidPortName`).
pub(super) fn port_name(name: &str) -> Result<(), &'static str> {
    let b = name.as_bytes();
    if b.len() > 15 {
        return Err("port name must be no more than 15 characters");
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err("port name must contain only 'a-z', '0-9' and '-'");
    }
    if !b.iter().any(|c| c.is_ascii_lowercase()) {
        return Err("port name must contain at least one letter");
    }
    if name.contains("--") {
        return Err("port name must not contain consecutive hyphens");
    }
    if b.first() == Some(&b'-') || b.last() == Some(&b'-') {
        return Err("port name must not begin or end with a hyphen");
    }
    Ok(())
}
