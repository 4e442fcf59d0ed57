//! Path normalisation tests: RFC 3986 examples and the bypasses it closes.

use super::*;

#[track_caller]
fn check(raw: &str, merge: bool, want: &str) {
    let got = normalize(raw, merge);
    assert_eq!(
        got.as_deref(),
        Ok(want),
        "normalize({raw:?}, merge_slashes={merge}): expected {want:?}, got {got:?}"
    );
}

#[test]
fn already_normal_paths_are_borrowed() {
    for p in ["/", "/foo", "/foo/bar/", "/a.b/c~d_e-f", "/foo//bar"] {
        let got = normalize(p, false).expect("valid");
        assert!(
            matches!(got, Cow::Borrowed(_)),
            "expected {p:?} to be borrowed unchanged, got {got:?}"
        );
        assert_eq!(got, p);
    }
}

#[test]
fn decodes_unreserved_only() {
    check("/%61dmin", false, "/admin");
    check("/%7Euser/%2d%5F", false, "/~user/-_");
    // Reserved and other characters stay encoded, hex uppercased.
    check("/a%2fb", false, "/a%2Fb");
    check("/a%2Fb", false, "/a%2Fb");
    check("/a%20b%3f", false, "/a%20b%3F");
    check("/%00", false, "/%00");
    check("/%e2%82%ac", false, "/%E2%82%AC");
}

#[test]
fn encoded_slash_is_never_a_separator() {
    // `/foo%2F..` is one segment `foo%2F..`: nothing to remove.
    check("/foo%2F..%2Fadmin", false, "/foo%2F..%2Fadmin");
    check("/foo/..%2fadmin", false, "/foo/..%2Fadmin");
}

#[test]
fn removes_dot_segments() {
    check("/a/./b", false, "/a/b");
    check("/a/b/../c", false, "/a/c");
    check("/a/b/.", false, "/a/b/");
    check("/a/b/..", false, "/a/");
    check("/..", false, "/");
    check("/../../etc/passwd", false, "/etc/passwd");
    check("/.", false, "/");
    check("/a/.b/..c/...", false, "/a/.b/..c/...");
    check("/.well-known/acme", false, "/.well-known/acme");
    // RFC 3986 5.4.1/5.4.2 style examples on absolute paths.
    check("/b/c/./../../g", false, "/g");
    check("/b/c/g;x=1/./y", false, "/b/c/g;x=1/y");
    check("/b/c/g;x=1/../y", false, "/b/c/y");
}

#[test]
fn encoded_dots_are_removed_too() {
    check("/public/%2e%2e/admin", false, "/admin");
    check("/public/%2E./admin", false, "/admin");
    check("/public/.%2e", false, "/");
}

#[test]
fn slashes_merge_only_when_asked() {
    check("/a//b", false, "/a//b");
    check("//admin", false, "//admin");
    check("/a//b", true, "/a/b");
    check("//admin", true, "/admin");
    check("/a//", true, "/a/");
    check("/a/..//b", false, "//b");
    check("/a/..//b", true, "/b");
}

#[test]
fn rejects_bad_input() {
    assert_eq!(normalize("*", false), Err(BadPath::NotAbsolute));
    assert_eq!(normalize("", false), Err(BadPath::NotAbsolute));
    assert_eq!(normalize("foo", false), Err(BadPath::NotAbsolute));
    for bad in ["/%", "/%2", "/%zz", "/a%g0"] {
        assert_eq!(
            normalize(bad, false),
            Err(BadPath::BadPercent),
            "expected {bad:?} to be rejected as a bad percent-encoding"
        );
    }
}

#[test]
fn keeps_non_ascii() {
    check("/caf\u{e9}/./x", false, "/caf\u{e9}/x");
}
