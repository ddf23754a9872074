//! Token scopes: `"METHODS PATTERN"`, e.g. `"GET,POST /orders/*"` or
//! `"* /reports/**"`. A scoped token passes only requests whose method and
//! canonical path match one of its scopes.

use std::fmt;

use http::Method;

use super::pattern::PathPattern;

/// The most scopes one token carries: each is checked on every request.
pub const MAX_SCOPES: usize = 32;
/// The longest scope text.
const MAX_LEN: usize = 512;

#[derive(Clone, PartialEq, Eq)]
pub struct Scope {
    /// `None`: any method.
    methods: Option<Vec<Method>>,
    pattern: PathPattern,
}

impl Scope {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_LEN {
            return Err(format!("a scope is at most {MAX_LEN} bytes"));
        }
        let mut words = text.split_ascii_whitespace();
        let (Some(methods), Some(pattern), None) = (words.next(), words.next(), words.next())
        else {
            return Err(format!(
                "scope `{text}` must be METHODS PATTERN, e.g. \"GET,POST /orders/*\" or \"* /reports/**\""
            ));
        };
        let methods = if methods == "*" {
            None
        } else {
            let mut list = Vec::new();
            for name in methods.split(',') {
                let method = Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                    .ok()
                    .filter(|_| !name.is_empty())
                    .ok_or_else(|| {
                        format!("scope `{text}`: `{name}` is not a method; list methods as GET,POST or write *")
                    })?;
                if !list.contains(&method) {
                    list.push(method);
                }
            }
            Some(list)
        };
        let pattern = PathPattern::parse(pattern).map_err(|e| format!("scope `{text}`: {e}"))?;
        Ok(Self { methods, pattern })
    }

    /// A list of scopes, each checked, at most [`MAX_SCOPES`].
    pub fn parse_all<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Self>, String> {
        if texts.len() > MAX_SCOPES {
            return Err(format!("a token has at most {MAX_SCOPES} scopes"));
        }
        texts.iter().map(|t| Self::parse(t.as_ref())).collect()
    }

    /// `path` is the canonical path; the query never counts.
    pub fn allows(&self, method: &Method, path: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.contains(method))
            && self.pattern.matches(path)
    }
}

/// The canonical text: methods upper-case, as stored and listed.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.methods {
            None => f.write_str("*")?,
            Some(methods) => {
                for (i, m) in methods.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(m.as_str())?;
                }
            }
        }
        write!(f, " {}", self.pattern)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(scope: &str, method: &str, path: &str) -> bool {
        Scope::parse(scope)
            .unwrap()
            .allows(&Method::from_bytes(method.as_bytes()).unwrap(), path)
    }

    #[test]
    fn methods_and_globs_both_have_to_match() {
        assert!(allows("GET /reports/**", "GET", "/reports/2026/q1"));
        assert!(allows("GET /reports/**", "GET", "/reports"));
        assert!(!allows("GET /reports/**", "POST", "/reports/x"));
        assert!(!allows("GET /reports/**", "GET", "/orders"));
        assert!(allows("GET,POST /orders/*", "POST", "/orders/7"));
        assert!(!allows("GET,POST /orders/*", "POST", "/orders/7/items"));
        assert!(!allows("GET,POST /orders/*", "DELETE", "/orders/7"));
        assert!(allows("* /orders/*", "DELETE", "/orders/7"));
        assert!(allows("get,post /x", "POST", "/x"), "methods in any case");
    }

    #[test]
    fn the_text_is_canonical() {
        assert_eq!(
            Scope::parse("get,Post,GET  /a/**").unwrap().to_string(),
            "GET,POST /a/**"
        );
        assert_eq!(Scope::parse("* /a").unwrap().to_string(), "* /a");
    }

    #[test]
    fn malformed_scopes_are_refused_with_the_reason() {
        for (bad, says) in [
            ("", "METHODS PATTERN"),
            ("GET", "METHODS PATTERN"),
            ("GET /a /b", "METHODS PATTERN"),
            ("GET reports", "must start with `/`"),
            ("GE T /a", "METHODS PATTERN"),
            ("GET,,POST /a", "not a method"),
            ("G(T /a", "not a method"),
            ("GET /a/**b", "whole segment"),
            ("GET /a?x", "path only"),
        ] {
            let e = Scope::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("GET /{i}")).collect();
        assert!(Scope::parse_all(&many).is_err());
        assert!(Scope::parse_all(&many[..MAX_SCOPES]).is_ok());
    }
}
