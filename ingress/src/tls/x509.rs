//! The few X.509 fields the certificate store needs (validity, subject
//! common name, DNS subject alternative names), read with `x509-parser`.
//! rustls (webpki) still does the real parsing and validation of the chain
//! it serves; these fields only feed error messages and SAN-based host
//! matching.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What the store reads from an end-entity certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    /// Subject common name, if any (for messages only: names are matched
    /// against the SAN, as clients do).
    pub common_name: Option<String>,
    /// DNS names from the subjectAltName extension, lower-cased.
    pub dns_names: Vec<String>,
    /// notBefore, seconds since the Unix epoch.
    pub not_before: i64,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Why a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DerError(pub String);

/// Reads validity, subject CN and SAN DNS names from a DER certificate.
pub(crate) fn parse(cert_der: &[u8]) -> Result<CertInfo, DerError> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| DerError(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(DerError(format!("subjectAltName: {e}"))),
    };
    let validity = cert.validity();
    Ok(CertInfo {
        common_name,
        dns_names,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2025-01-31T12:00:00Z`).
pub(crate) fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} s after the epoch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(2_147_483_647), "2038-01-19T03:14:07Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x05, 0x02],
        ] {
            assert!(parse(bytes).is_err(), "{bytes:?} parsed");
        }
    }
}
