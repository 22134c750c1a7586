//! What a request is about, normalized once: the host it names and the path
//! the upstream will see. Policies and routing are decided on exactly these
//! values, and the upstream receives exactly the same path, so the gateway
//! and the application cannot disagree about which resource was asked for.
//!
//! Path rules (each closes a known bypass):
//! - percent-escapes of unreserved characters are decoded (`%61` → `a`,
//!   `%2e` → `.`), other escapes are kept with uppercase hex;
//! - encoded `/` and `\` (`%2F`, `%5C`), raw `\`, encoded or raw control
//!   characters and spaces, NUL, invalid escapes, escapes that are not valid
//!   UTF-8 (overlong `%c0%ae`), and look-alike slashes and dots are refused;
//! - `.` and `..` segments are resolved (`..` above the root is refused),
//!   repeated slashes are collapsed;
//! - a segment ending in `.` is refused (some servers drop the dot);
//! - `;params` in a segment are kept, but prefixes match on the segment
//!   without them (so `/admin;x=1` is under `/admin`).

/// Why a path or host was refused (answered with 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not an origin-form path.
    #[error("the path does not start with '/'")]
    NotAbsolute,
    /// `%` not followed by two hex digits.
    #[error("the path has an invalid percent-escape")]
    BadEscape,
    /// An encoded `/` or `\`, or a raw `\`.
    #[error("the path has an encoded or backward slash")]
    EncodedSlash,
    /// NUL, control characters or whitespace, raw or encoded.
    #[error("the path has control characters or whitespace")]
    Control,
    /// Escapes that do not decode to UTF-8, or characters that imitate `/`,
    /// `\` or `.`.
    #[error("the path has invalid or confusable characters")]
    Confusable,
    /// `..` above the root.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// A segment ending in `.`.
    #[error("a path segment ends with '.'")]
    TrailingDot,
}

/// Characters that some systems fold into `/`, `\` or `.`.
const CONFUSABLES: [char; 6] = [
    '\u{FF0F}', // fullwidth solidus
    '\u{FF3C}', // fullwidth reverse solidus
    '\u{FF0E}', // fullwidth full stop
    '\u{2215}', // division slash
    '\u{2044}', // fraction slash
    '\u{29F8}', // big solidus
];

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes an origin-form path (without its query), by the rules above.
pub fn normalize_path(raw: &str) -> Result<String, TargetError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(TargetError::NotAbsolute);
    }
    // Pass 1: escapes. `decoded` collects every byte as the application will
    // see it, to check it is UTF-8 without look-alikes; `canonical` is the
    // path with unreserved escapes decoded and the others uppercased.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut canonical = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(TargetError::BadEscape);
            };
            let value = hi << 4 | lo;
            match value {
                b'/' | b'\\' => return Err(TargetError::EncodedSlash),
                0..=0x20 | 0x7f => return Err(TargetError::Control),
                _ => {}
            }
            decoded.push(value);
            if unreserved(value) {
                canonical.push(char::from(value));
            } else {
                canonical.push_str(&format!("%{value:02X}"));
            }
            i += 3;
            continue;
        }
        match b {
            b'\\' => return Err(TargetError::EncodedSlash),
            0..=0x20 | 0x7f => return Err(TargetError::Control),
            0x80.. => return Err(TargetError::Confusable),
            _ => {}
        }
        decoded.push(b);
        canonical.push(char::from(b));
        i += 1;
    }
    let text = std::str::from_utf8(&decoded).map_err(|_| TargetError::Confusable)?;
    if text.chars().any(|c| CONFUSABLES.contains(&c)) {
        return Err(TargetError::Confusable);
    }

    // Pass 2: segments.
    let trailing_slash = canonical.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    let mut ends_in_dir = trailing_slash;
    for segment in canonical.split('/').filter(|s| !s.is_empty()) {
        ends_in_dir = false;
        match segment {
            "." => ends_in_dir = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(TargetError::AboveRoot);
                }
                ends_in_dir = true;
            }
            _ => {
                if strip_params(segment).ends_with('.') {
                    return Err(TargetError::TrailingDot);
                }
                segments.push(segment);
            }
        }
    }
    let mut path = String::with_capacity(canonical.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || ends_in_dir || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// A segment without its `;params`.
fn strip_params(segment: &str) -> &str {
    segment.split_once(';').map_or(segment, |(name, _)| name)
}

/// Whether normalized `path` lies under normalized `prefix` (`/` or `/a/b`),
/// whole segments only, `;params` ignored.
pub fn under_prefix(path: &str, prefix: &str, case_insensitive: bool) -> bool {
    if prefix == "/" {
        return true;
    }
    let mut path_segments = path.split('/').skip(1);
    for want in prefix.split('/').skip(1) {
        let Some(have) = path_segments.next() else {
            return false;
        };
        let have = strip_params(have);
        let equal = if case_insensitive {
            have.eq_ignore_ascii_case(want)
        } else {
            have == want
        };
        if !equal {
            return false;
        }
    }
    true
}

/// Normalizes a `Host` value or `:authority`: lowercase, one trailing dot
/// removed, port split off. `None` for anything else (userinfo, spaces,
/// empty labels, bad ports).
pub fn normalize_host(raw: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let address: std::net::Ipv6Addr = inside.parse().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (format!("[{address}]"), port)
    } else {
        let (host, port) = match raw.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if host.is_empty() || host.len() > 253 {
            return None;
        }
        for label in host.split('.') {
            if label.is_empty()
                || label.len() > 63
                || label.starts_with('-')
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return None;
            }
        }
        (host, port)
    };
    let port = match port {
        None => None,
        Some(text) => {
            if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(text.parse::<u16>().ok().filter(|p| *p != 0)?)
        }
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_or_are_refused() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//admin", "/admin"),
            ("///admin//x", "/admin/x"),
            ("/./admin", "/admin"),
            ("/admin/.", "/admin/"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E./admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%3bb", "/a%3Bb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/public;/../admin", "/admin"),
            ("/admin;x=1", "/admin;x=1"),
            ("/%252e%252e%252f", "/%252e%252e%252f"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
        let refused = [
            ("admin", TargetError::NotAbsolute),
            ("", TargetError::NotAbsolute),
            ("/public/..%2fadmin", TargetError::EncodedSlash),
            ("/public/..%2Fadmin", TargetError::EncodedSlash),
            ("/public/..%5cadmin", TargetError::EncodedSlash),
            ("/public\\admin", TargetError::EncodedSlash),
            ("/admin%00", TargetError::Control),
            ("/admin%20", TargetError::Control),
            ("/admin%09", TargetError::Control),
            ("/admin%0d%0a", TargetError::Control),
            ("/admin.", TargetError::TrailingDot),
            ("/admin.;x", TargetError::TrailingDot),
            ("/%c0%ae%c0%ae/admin", TargetError::Confusable),
            ("/%ef%bc%8fadmin", TargetError::Confusable),
            ("/a%zz", TargetError::BadEscape),
            ("/a%2", TargetError::BadEscape),
            ("/..", TargetError::AboveRoot),
            ("/a/../../b", TargetError::AboveRoot),
        ];
        for (raw, want) in refused {
            assert_eq!(normalize_path(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn normalization_is_idempotent() {
        for raw in [
            "/a/./b/../c//d/",
            "/%61%2e%62/x",
            "/x;y/../z",
            "/caf%c3%a9/",
        ] {
            let once = normalize_path(raw).unwrap();
            assert_eq!(normalize_path(&once).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments_without_params() {
        assert!(under_prefix("/admin", "/admin", false));
        assert!(under_prefix("/admin/", "/admin", false));
        assert!(under_prefix("/admin/x", "/admin", false));
        assert!(under_prefix("/admin;x=1", "/admin", false));
        assert!(under_prefix("/admin;x=1/y", "/admin", false));
        assert!(!under_prefix("/adminx", "/admin", false));
        assert!(!under_prefix("/ADMIN", "/admin", false));
        assert!(under_prefix("/ADMIN", "/admin", true));
        assert!(!under_prefix("/", "/admin", false));
        assert!(under_prefix("/anything", "/", false));
        assert!(under_prefix("/a/b/c", "/a/b", false));
        assert!(!under_prefix("/a/c", "/a/b", false));
    }

    #[test]
    fn hosts_normalize_or_are_refused() {
        let ok = [
            ("App.Example.COM", ("app.example.com", None)),
            ("app.example.com.", ("app.example.com", None)),
            ("app.example.com:443", ("app.example.com", Some(443))),
            ("[2001:DB8::1]:8443", ("[2001:db8::1]", Some(8443))),
            ("[2001:db8::1]", ("[2001:db8::1]", None)),
            ("192.0.2.1", ("192.0.2.1", None)),
            ("localhost", ("localhost", None)),
        ];
        for (raw, (host, port)) in ok {
            assert_eq!(normalize_host(raw), Some((host.to_owned(), port)), "{raw}");
        }
        for raw in [
            "",
            "user@app.example.com",
            "app.example.com ",
            " app.example.com",
            "app..example.com",
            "app.example.com:",
            "app.example.com:0",
            "app.example.com:99999",
            "app.example.com:44x",
            "-app.example.com",
            "app.example.com..",
            "[2001:db8::1",
            "[nonsense]",
            "a/b",
        ] {
            assert_eq!(normalize_host(raw), None, "{raw:?}");
        }
    }
}
