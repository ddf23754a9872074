//! Path patterns for `public` and `[[rules]]`: compiled once at config load.
//!
//! `*` matches any run of characters inside one segment; `**` as a whole
//! segment matches any number of segments, none included, so `/docs/**`
//! matches `/docs`, `/docs/` and `/docs/a/b`. Matching is case-sensitive and
//! only ever sees the canonical path (never the query string).

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A segment with one or more `*`, split on them: `a*b*c` → `["a","b","c"]`.
    Glob(Vec<String>),
    /// `**`: zero or more whole segments.
    Any,
}

#[derive(Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
}

impl PathPattern {
    pub fn parse(source: &str) -> Result<Self, String> {
        let Some(rest) = source.strip_prefix('/') else {
            return Err(format!("pattern `{source}` must start with `/`"));
        };
        if source.contains(['?', '#']) {
            return Err(format!(
                "pattern `{source}` contains `?` or `#`; patterns match the path only"
            ));
        }
        let segments = rest
            .split('/')
            .map(|seg| {
                if seg == "**" {
                    Ok(Segment::Any)
                } else if seg.contains("**") {
                    Err(format!(
                        "pattern `{source}`: `**` must be a whole segment, as in `/docs/**`"
                    ))
                } else if seg.contains('*') {
                    Ok(Segment::Glob(seg.split('*').map(str::to_owned).collect()))
                } else {
                    Ok(Segment::Literal(seg.to_owned()))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// `path` must be a canonical path (see `canonical`), starting with `/`.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match_segments(&self.segments, &parts)
    }
}

fn match_segments(pattern: &[Segment], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Segment::Any, rest)) => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((seg, rest)) => match path.split_first() {
            Some((part, path_rest)) => match_one(seg, part) && match_segments(rest, path_rest),
            None => false,
        },
    }
}

fn match_one(segment: &Segment, part: &str) -> bool {
    match segment {
        Segment::Literal(lit) => lit == part,
        Segment::Any => true,
        Segment::Glob(pieces) => glob(pieces, part),
    }
}

/// `pieces` came from splitting on `*`: the first must prefix, the last must
/// suffix, the middle ones must appear in order.
fn glob(pieces: &[String], text: &str) -> bool {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return true;
    };
    if pieces.len() == 1 {
        return first == text;
    }
    if text.len() < first.len() + last.len() || !text.starts_with(first.as_str()) {
        return false;
    }
    if !text.ends_with(last.as_str()) {
        return false;
    }
    let mut middle = &text[first.len()..text.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match middle.find(piece.as_str()) {
            Some(at) => middle = &middle[at + piece.len()..],
            None => return false,
        }
    }
    true
}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn double_star_matches_zero_or_more_segments() {
        assert!(m("/docs/**", "/docs"));
        assert!(m("/docs/**", "/docs/"));
        assert!(m("/docs/**", "/docs/a"));
        assert!(m("/docs/**", "/docs/a/b"));
        assert!(!m("/docs/**", "/docsx"));
        assert!(!m("/docs/**", "/doc"));
        assert!(!m("/docs/**", "/other/docs"));
        assert!(m("/**", "/"));
        assert!(m("/**", "/anything/at/all"));
        assert!(m("/a/**/z", "/a/z"));
        assert!(m("/a/**/z", "/a/b/c/z"));
        assert!(!m("/a/**/z", "/a/b/c"));
    }

    #[test]
    fn single_star_stays_in_one_segment() {
        assert!(m("/users/*", "/users/bob"));
        assert!(!m("/users/*", "/users/bob/keys"));
        assert!(!m("/users/*", "/users"));
        assert!(m("/files/*.json", "/files/a.json"));
        assert!(!m("/files/*.json", "/files/a.json/x"));
        assert!(!m("/files/*.json", "/files/a.txt"));
        assert!(m("/a*b*c", "/abc"));
        assert!(m("/a*b*c", "/aXbYc"));
        assert!(!m("/a*b*c", "/acb"));
        assert!(!m("/ab*ba", "/aba"));
    }

    #[test]
    fn literal_patterns_match_exactly_and_case_sensitively() {
        assert!(m("/health", "/health"));
        assert!(!m("/health", "/health/"));
        assert!(!m("/health", "/Health"));
        assert!(!m("/health", "/healthz"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(PathPattern::parse("docs/**").is_err());
        assert!(PathPattern::parse("/docs/a**").is_err());
        assert!(PathPattern::parse("/docs?x=1").is_err());
    }
}
