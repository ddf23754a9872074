//! The one canonical form of a request path. The gateway decides on this
//! form and forwards exactly this form, so the upstream cannot read a path
//! differently from the gateway (the `..`, `%2F` and `;` bypass families).
//!
//! Percent-encoded unreserved characters are decoded (`%61` → `a`), other
//! escapes are upper-cased (`%2f` stays refused, `%c3%a9` → `%C3%A9`), and
//! anything a server could resolve differently is refused: dot segments
//! (raw or encoded), empty segments, encoded `/` or `\`, backslashes, `;`,
//! NUL and other control characters.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    BadEscape,
    EncodedSeparator,
    Backslash,
    Semicolon,
    ControlCharacter,
    DotSegment,
    EmptySegment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotOriginForm => "path does not start with `/`",
            PathError::BadEscape => "malformed percent escape",
            PathError::EncodedSeparator => "percent-encoded `/` or `\\`",
            PathError::Backslash => "backslash in path",
            PathError::Semicolon => "`;` parameter in path",
            PathError::ControlCharacter => "control character in path",
            PathError::DotSegment => "`.` or `..` segment",
            PathError::EmptySegment => "empty path segment (`//`)",
        })
    }
}

/// Returns the canonical form of `raw` (the path part of a request target).
pub fn canonicalize(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut out = String::with_capacity(raw.len());
    // Runs of bytes that stay as they are are copied whole: most paths
    // are one such run.
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_path_char(b) {
            i += 1;
            continue;
        }
        // A run is ASCII, so both its ends are char boundaries; the bytes
        // of a non-ASCII character are escaped one by one, never sliced.
        if run < i {
            out.push_str(&raw[run..i]);
        }
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).and_then(|h| hex(*h)),
                    bytes.get(i + 2).and_then(|l| hex(*l)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    _ if is_unreserved(decoded) => out.push(decoded as char),
                    _ => push_escape(&mut out, decoded),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            // Non-ASCII, spaces, quotes and the like: one escaped spelling.
            _ => {
                push_escape(&mut out, b);
                i += 1;
            }
        }
        run = i;
    }
    if run < bytes.len() {
        out.push_str(&raw[run..]);
    }
    let mut segments = out[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "." | ".." => return Err(PathError::DotSegment),
            // A trailing slash is a distinct, unambiguous resource.
            "" if segments.peek().is_some() => return Err(PathError::EmptySegment),
            _ => {}
        }
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 `pchar` and `/`, less `;` (refused above) and `%` (escapes).
fn is_path_char(b: u8) -> bool {
    is_unreserved(b) || b"/!$&'()*+,=:@".contains(&b)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xf)] as char);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass_unchanged() {
        for p in [
            "/",
            "/a",
            "/a/b",
            "/a/b/",
            "/a-b_c.d~e",
            "/x:y@z",
            "/a.b/c..d",
        ] {
            assert_eq!(canonicalize(p).as_deref(), Ok(p));
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_uppercased() {
        assert_eq!(canonicalize("/%61dmin").as_deref(), Ok("/admin"));
        assert_eq!(canonicalize("/%7euser").as_deref(), Ok("/~user"));
        assert_eq!(canonicalize("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(canonicalize("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(canonicalize("/a%3bb").as_deref(), Ok("/a%3Bb"));
        assert_eq!(canonicalize("/a b\"c\"").as_deref(), Ok("/a%20b%22c%22"));
        assert_eq!(canonicalize("/é").as_deref(), Ok("/%C3%A9"));
    }

    #[test]
    fn dot_segments_are_refused_raw_and_encoded() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/.",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E%2E/b",
            "/a/.%2e/b",
            "/a/%2e./b",
            "/%2e",
            "/a/%2e/",
        ] {
            assert_eq!(canonicalize(p), Err(PathError::DotSegment), "{p}");
        }
    }

    #[test]
    fn separators_and_parameters_are_refused() {
        assert_eq!(canonicalize("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(canonicalize("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(canonicalize("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(canonicalize("/a\\b"), Err(PathError::Backslash));
        assert_eq!(canonicalize("/a/..;/b"), Err(PathError::Semicolon));
        assert_eq!(canonicalize("/a;jsessionid=1"), Err(PathError::Semicolon));
        assert_eq!(canonicalize("//a"), Err(PathError::EmptySegment));
        assert_eq!(canonicalize("/a//b"), Err(PathError::EmptySegment));
        assert_eq!(canonicalize("/a%00b"), Err(PathError::ControlCharacter));
        assert_eq!(canonicalize("/a\0b"), Err(PathError::ControlCharacter));
        assert_eq!(canonicalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(canonicalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(canonicalize("*"), Err(PathError::NotOriginForm));
        assert_eq!(canonicalize(""), Err(PathError::NotOriginForm));
    }
}
