//! The few X.509 fields the certificate store needs (validity, subject
//! common name, DNS subject alternative names), read with a minimal DER
//! reader so the ingress needs no general X.509 crate. rustls (webpki)
//! still does the real parsing and validation of the chain it serves.
//!
//! Layout (RFC 5280 §4.1):
//! ```text
//! Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
//! TBSCertificate ::= SEQUENCE {
//!     version [0] EXPLICIT OPTIONAL, serialNumber INTEGER, signature AlgorithmIdentifier,
//!     issuer Name, validity SEQUENCE { notBefore Time, notAfter Time }, subject Name,
//!     subjectPublicKeyInfo, issuerUniqueID [1] OPTIONAL, subjectUniqueID [2] OPTIONAL,
//!     extensions [3] EXPLICIT SEQUENCE OF Extension OPTIONAL }
//! ```

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;
/// GeneralName `dNSName [2] IA5String`, implicitly tagged (context, primitive).
const DNS_NAME: u8 = 0x82;
/// 2.5.29.17 subjectAltName
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// 2.5.4.3 commonName
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

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
pub(crate) struct DerError(pub &'static str);

type Result<T> = std::result::Result<T, DerError>;

/// A cursor over DER TLVs.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// Reads one TLV, returning its tag and contents.
    fn any(&mut self) -> Result<(u8, &'a [u8])> {
        let [tag, first, rest @ ..] = self.0 else {
            return Err(DerError("truncated DER element"));
        };
        if tag & 0x1f == 0x1f {
            return Err(DerError("multi-byte DER tags are not used in X.509"));
        }
        let (len, rest) = if first & 0x80 == 0 {
            (usize::from(*first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err(DerError("bad DER length"));
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err(DerError("DER element longer than its container"));
        }
        let (body, after) = rest.split_at(len);
        self.0 = after;
        Ok((*tag, body))
    }

    fn expect(&mut self, want: u8) -> Result<&'a [u8]> {
        match self.any()? {
            (tag, body) if tag == want => Ok(body),
            _ => Err(DerError("unexpected DER tag")),
        }
    }

    fn skip_if(&mut self, tag: u8) -> Result<()> {
        if self.peek_tag() == Some(tag) {
            self.any()?;
        }
        Ok(())
    }
}

/// Reads validity, subject CN and SAN DNS names from a DER certificate.
pub(crate) fn parse(cert_der: &[u8]) -> Result<CertInfo> {
    let cert = Der(cert_der).expect(SEQUENCE)?;
    let mut tbs = Der(Der(cert).expect(SEQUENCE)?);
    tbs.skip_if(VERSION)?;
    tbs.expect(INTEGER)?; // serialNumber
    tbs.expect(SEQUENCE)?; // signature
    tbs.expect(SEQUENCE)?; // issuer
    let mut validity = Der(tbs.expect(SEQUENCE)?);
    let not_before = time(&mut validity)?;
    let not_after = time(&mut validity)?;
    let common_name = common_name(tbs.expect(SEQUENCE)?)?;
    tbs.expect(SEQUENCE)?; // subjectPublicKeyInfo
    let mut dns_names = Vec::new();
    while !tbs.is_empty() {
        let (tag, body) = tbs.any()?;
        if tag == EXTENSIONS {
            dns_names = san_dns_names(Der(body).expect(SEQUENCE)?)?;
        }
    }
    Ok(CertInfo {
        common_name,
        dns_names,
        not_before,
        not_after,
    })
}

fn common_name(name: &[u8]) -> Result<Option<String>> {
    let mut rdns = Der(name);
    let mut cn = None;
    while !rdns.is_empty() {
        let mut set = Der(rdns.expect(SET)?);
        while !set.is_empty() {
            let mut atv = Der(set.expect(SEQUENCE)?);
            if atv.expect(OID)? == OID_CN {
                // UTF8String, PrintableString, IA5String, ...: all bytes we can show.
                let (_, value) = atv.any()?;
                cn = Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    Ok(cn)
}

fn san_dns_names(extensions: &[u8]) -> Result<Vec<String>> {
    let mut exts = Der(extensions);
    while !exts.is_empty() {
        let mut ext = Der(exts.expect(SEQUENCE)?);
        if ext.expect(OID)? != OID_SAN {
            continue;
        }
        ext.skip_if(BOOLEAN)?; // critical
        let value = ext.expect(OCTET_STRING)?;
        let mut names = Der(Der(value).expect(SEQUENCE)?);
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, body) = names.any()?;
            if tag == DNS_NAME {
                let name =
                    std::str::from_utf8(body).map_err(|_| DerError("dNSName is not ASCII"))?;
                out.push(name.to_ascii_lowercase());
            }
        }
        return Ok(out);
    }
    Ok(Vec::new())
}

/// `Time ::= CHOICE { utcTime UTCTime, generalTime GeneralizedTime }`, both
/// in the DER form `...Z` (RFC 5280 §4.1.2.5).
fn time(der: &mut Der<'_>) -> Result<i64> {
    let (tag, body) = der.any()?;
    let text = std::str::from_utf8(body).map_err(|_| DerError("bad time"))?;
    let digits = text
        .strip_suffix('Z')
        .ok_or(DerError("time is not in UTC"))?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DerError("bad time"));
    }
    let num = |s: &str| s.parse::<i64>().map_err(|_| DerError("bad time"));
    let (year, rest) = match (tag, digits.len()) {
        // RFC 5280: YY >= 50 is 19YY, otherwise 20YY.
        (UTC_TIME, 12) => {
            let yy = num(&digits[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (num(&digits[..4])?, &digits[4..]),
        _ => return Err(DerError("bad time")),
    };
    let [month, day, hour, minute, second] = [0, 2, 4, 6, 8].map(|i| num(&rest[i..i + 2]));
    let (month, day, hour, minute, second) = (month?, day?, hour?, minute?, second?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(DerError("bad time"));
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`2025-01-31T12:00:00Z`).
pub(crate) fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Inverse of [`days_from_civil`] (same source).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, <https://howardhinnant.github.io/date_algorithms.html>).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2038, 1, 19), 24_855);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for days in [-1, 0, 11_017, 24_855, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(rfc3339(2_147_483_647), "2038-01-19T03:14:07Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn times() {
        let t = |tag: u8, s: &str| {
            let mut der = vec![tag, s.len() as u8];
            der.extend_from_slice(s.as_bytes());
            time(&mut Der(&der))
        };
        assert_eq!(t(UTC_TIME, "700101000000Z"), Ok(0));
        assert_eq!(t(UTC_TIME, "380119031407Z"), Ok(2_147_483_647));
        assert_eq!(t(GENERALIZED_TIME, "20380119031407Z"), Ok(2_147_483_647));
        assert_eq!(t(UTC_TIME, "491231235959Z"), Ok(2_524_607_999));
        assert!(t(UTC_TIME, "700101000000+0100").is_err());
        assert!(t(UTC_TIME, "7001010000Z").is_err());
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
