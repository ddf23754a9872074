//! Path patterns for `public` and `[[rules]]`: compiled once at config load.
//!
//! `*` matches any run of characters inside one segment; `**` as a whole
//! segment matches any number of segments, none included, so `/docs/**`
//! matches `/docs`, `/docs/` and `/docs/a/b`. Matching is case-sensitive and
//! only ever sees the canonical path (never the query string).

use std::fmt;

/// The matcher keeps one bit per pattern position, plus one for the end,
/// in a `u128`.
const MAX_SEGMENTS: usize = 127;

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
        if segments.len() > MAX_SEGMENTS {
            return Err(format!(
                "pattern `{source}` has more than {MAX_SEGMENTS} segments"
            ));
        }
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
        self.run(path, || {})
    }

    /// How many (pattern position, path segment) pairs `matches` tries for
    /// `path`: never more than `(segments + 1) × path segments`, which is
    /// what makes matching linear in the path for a fixed pattern.
    pub fn match_steps(&self, path: &str) -> usize {
        let mut steps = 0;
        self.run(path, || steps += 1);
        steps
    }

    /// One pass over the path's segments, carrying the set of pattern
    /// positions still alive (a bit per position; bit `n` is "whole pattern
    /// consumed"). Nothing is ever retried, so no input can make it
    /// backtrack.
    fn run(&self, path: &str, mut step: impl FnMut()) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let done = 1u128 << self.segments.len();
        let mut alive = self.closure(1);
        for part in rest.split('/') {
            let mut next = 0u128;
            for (i, seg) in self.segments.iter().enumerate() {
                if alive & (1 << i) == 0 {
                    continue;
                }
                step();
                next |= match seg {
                    // `**` eats this segment and stays put.
                    Segment::Any => 1 << i,
                    _ if match_one(seg, part) => 1 << (i + 1),
                    _ => 0,
                };
            }
            alive = self.closure(next);
            if alive == 0 {
                return false;
            }
        }
        alive & done != 0
    }

    /// Adds the positions reachable without consuming a segment: past any
    /// `**`, which may match none. Ascending order carries runs of `**`.
    fn closure(&self, mut alive: u128) -> u128 {
        for (i, seg) in self.segments.iter().enumerate() {
            if matches!(seg, Segment::Any) && alive & (1 << i) != 0 {
                alive |= 1 << (i + 1);
            }
        }
        alive
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
/// suffix, the middle ones must appear in order. Taking each middle piece at
/// its leftmost place is never wrong (it leaves the most room for the rest),
/// so one forward scan decides: no backtracking inside a segment either.
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
        assert!(PathPattern::parse(&"/a".repeat(MAX_SEGMENTS)).is_ok());
        assert!(PathPattern::parse(&"/a".repeat(MAX_SEGMENTS + 1)).is_err());
    }

    /// The recursive matcher this module used before, kept as the reference
    /// for what the patterns mean. `calls` counts its work.
    fn reference(pattern: &[Segment], path: &[&str], calls: &mut u64) -> bool {
        *calls += 1;
        match pattern.split_first() {
            None => path.is_empty(),
            Some((Segment::Any, rest)) => {
                (0..=path.len()).any(|skip| reference(rest, &path[skip..], calls))
            }
            Some((seg, rest)) => match path.split_first() {
                Some((part, path_rest)) => {
                    match_one(seg, part) && reference(rest, path_rest, calls)
                }
                None => false,
            },
        }
    }

    fn reference_matches(p: &PathPattern, path: &str, calls: &mut u64) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        reference(&p.segments, &parts, calls)
    }

    /// xorshift64: deterministic, so a failure names its seed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    #[test]
    fn the_one_pass_matcher_agrees_with_the_recursive_one() {
        // Small alphabets so that random patterns and paths meet often.
        const PATTERN_SEGMENTS: &[&str] = &[
            "**", "*", "a", "b", "", "a*", "*a", "a*b", "*a*", "ab*ba", "a**",
        ];
        const PATH_SEGMENTS: &[&str] = &["a", "b", "", "ab", "ba", "aba", "abba", "bab"];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut matched = 0;
        for case in 0..20_000 {
            let mut pattern = String::new();
            for _ in 0..=rng.below(5) {
                pattern.push('/');
                pattern.push_str(rng.pick(PATTERN_SEGMENTS));
            }
            let Ok(compiled) = PathPattern::parse(&pattern) else {
                continue;
            };
            for _ in 0..8 {
                let mut path = String::new();
                for _ in 0..=rng.below(7) {
                    path.push('/');
                    path.push_str(rng.pick(PATH_SEGMENTS));
                }
                let want = reference_matches(&compiled, &path, &mut 0);
                assert_eq!(
                    compiled.matches(&path),
                    want,
                    "case {case}: `{pattern}` against `{path}`"
                );
                matched += usize::from(want);
            }
        }
        // Both answers must have come up often for the comparison to mean anything.
        assert!(matched > 5_000, "only {matched} matches");
    }

    #[test]
    fn repeated_segments_cost_linear_work_against_the_reviews_pattern() {
        let pattern = PathPattern::parse("/docs/**/img/**/*.png").unwrap();
        let positions = pattern.segments.len() + 1;
        for repeats in [10, 100, 1_000, 10_000] {
            for unit in ["img/", "docs/img/", "img/x.png/"] {
                let path = format!("/docs/{}", unit.repeat(repeats));
                let segments = path.split('/').count() - 1;
                let bound = positions * segments;
                let steps = pattern.match_steps(&path);
                assert!(
                    steps <= bound,
                    "{steps} steps > {bound} for {repeats} x {unit}"
                );
                if repeats <= 100 {
                    assert_eq!(
                        pattern.matches(&path),
                        reference_matches(&pattern, &path, &mut 0),
                        "{repeats} x {unit}"
                    );
                }
            }
        }
        // The recursive matcher, for contrast, tries every split of the path
        // between the two `**`: half the segments squared, far past the bound.
        let path = format!("/docs/{}", "img/".repeat(1_000));
        let mut calls = 0;
        reference_matches(&pattern, &path, &mut calls);
        assert!(calls > 1_000 * 1_000 / 2, "{calls} calls");
    }
}
