//! Request path normalisation before routing, so that one resource has one
//! spelling by the time [`RouteTable::route`](crate::route::RouteTable::route)
//! compares it byte for byte.
//!
//! Conservative, RFC 3986 section 6.2.2 (syntax-based normalisation) only:
//!
//! 1. Percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded (6.2.2.2): `/%61dmin` is `/admin`, `%2E%2E` is `..`.
//!    Everything else stays encoded, with its hex digits uppercased
//!    (6.2.2.1): `%2f` becomes `%2F` and is never a path separator, so a
//!    request can never reach a route through a decoded `/`. A `%` not
//!    followed by two hex digits is a bad request (400).
//! 2. Dot segments are removed (5.2.4, after step 1 so that encoded dots
//!    cannot smuggle `..` past the router): `/a/./b/../c` is `/a/c`, and
//!    `..` never climbs above `/`.
//! 3. Empty segments (`//`) are kept unless `merge_slashes` is set: they
//!    are significant to some backends (Envoy keeps them by default too;
//!    nginx merges). Element-wise Prefix matching already treats `/foo//x`
//!    as under `/foo`.
//!
//! The normalised path is the one forwarded upstream, so the backend sees
//! exactly what was routed. The query string is not touched.

#[cfg(test)]
mod tests;

use std::borrow::Cow;

/// Why a request path cannot be normalised (the proxy answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// Not origin-form: does not start with `/` (e.g. `*` or empty
    /// authority-form targets).
    #[error("request path does not start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding in request path")]
    BadPercent,
}

/// The normalised form of `path` (no query string); borrowed when it is
/// already normal.
pub fn normalize(path: &str, merge_slashes: bool) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let needs_work =
        bytes.contains(&b'%') || path.contains("/.") || (merge_slashes && path.contains("//"));
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded, merge_slashes)))
}

/// Step 1: decode unreserved characters, uppercase the hex of the rest.
fn decode_unreserved(bytes: &[u8]) -> Result<String, BadPath> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // `path` is a `&str`, and only ASCII is ever decoded, so pushing
            // the original bytes back one char at a time keeps UTF-8 valid;
            // non-ASCII is copied as a whole char below.
            if b.is_ascii() {
                out.push(b as char);
                i += 1;
            } else {
                let rest = std::str::from_utf8(&bytes[i..]).map_err(|_| BadPath::BadPercent)?;
                let c = rest.chars().next().ok_or(BadPath::BadPercent)?;
                out.push(c);
                i += c.len_utf8();
            }
            continue;
        }
        let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(&hi), Some(&lo)) => (hex(hi)?, hex(lo)?),
            _ => return Err(BadPath::BadPercent),
        };
        let decoded = hi << 4 | lo;
        if is_unreserved(decoded) {
            out.push(decoded as char);
        } else {
            out.push('%');
            out.push(HEX_UPPER[usize::from(hi)] as char);
            out.push(HEX_UPPER[usize::from(lo)] as char);
        }
        i += 3;
    }
    Ok(out)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Result<u8, BadPath> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(BadPath::BadPercent),
    }
}

/// RFC 3986 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Steps 2 and 3 on a path starting with `/`. Segment-wise equivalent of
/// RFC 3986 5.2.4: a final `.` or `..` leaves a trailing `/`.
fn remove_dot_segments(path: &str, merge_slashes: bool) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path[1..].split('/').peekable();
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            "" if merge_slashes && !last => continue,
            s => {
                segments.push(s);
                continue;
            }
        }
        if last {
            segments.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}
