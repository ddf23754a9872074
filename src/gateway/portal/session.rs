//! Sessions of the token page: a store token like any other (kept as a
//! digest, ended by sign-out, a password change, disable and remove), but
//! labelled and scoped so that it can never pass as an API token: its one
//! scope names a method no client sends on a path no canonical path is.
//! The cookie carrying it is HttpOnly, SameSite=Strict and scoped to the
//! page's path; forms carry a CSRF value derived from it.

use http::HeaderMap;
use http::header::{self, HeaderValue};
use sha2::{Digest, Sha256};

use crate::request::scope::Scope;
use crate::store::TokenInfo;

pub const COOKIE: &str = "tg_session";
pub const LABEL: &str = "portal session";
/// Never allows a request: an HTTP method no client uses, on `/.`, which
/// is never a canonical path.
pub const SCOPE: &str = "TOKENGATE-PORTAL-SESSION /.";

pub fn scope() -> Scope {
    // A constant that parses; checked by the tests below.
    Scope::parse(SCOPE).unwrap_or_else(|e| unreachable!("{e}"))
}

/// Whether a stored token is a session, not an API token.
pub fn is_session(scopes: &[String]) -> bool {
    scopes.len() == 1 && scopes[0] == SCOPE
}

/// Whether a listed token is a session of the page.
pub fn listed_as_session(token: &TokenInfo) -> bool {
    is_session(&token.record.scopes)
}

/// The session secret the request's cookie carries, if any.
pub fn from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The Set-Cookie value for a new session (`secret`), or one that ends it
/// (`None`).
pub fn set_cookie(path: &str, secret: Option<&str>, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = match secret {
        Some(secret) => format!(
            "{COOKIE}={secret}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        ),
        None => format!("{COOKIE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict{secure}"),
    };
    // Token secrets and paths from the config are plain ASCII.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The CSRF value of a session: a digest of its secret, so a page holds
/// it without holding the secret, and no other session's value passes.
pub fn csrf(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"tokengate portal csrf\0")
        .chain_update(secret.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares in time independent of where the inputs differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether a POST comes from the page itself. A browser says where a
/// request comes from in Sec-Fetch-Site, which no page can forge; where it
/// is absent (an older browser), Origin must be this origin. Origin alone
/// is not enough with this page's `Referrer-Policy: no-referrer`: browsers
/// then send `Origin: null` on the page's own forms.
pub fn same_origin(headers: &HeaderMap, scheme: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    host.is_some_and(|host| origin == format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn a_session_token_allows_no_request() {
        let scope = scope();
        for method in [Method::GET, Method::POST, Method::DELETE] {
            for path in ["/", "/api", "/_tokengate", "/x/y"] {
                assert!(!scope.allows(&method, path), "{method} {path}");
            }
        }
        assert!(is_session(&[SCOPE.to_owned()]));
        assert!(!is_session(&["GET /**".to_owned()]));
        assert!(!is_session(&[]));
    }

    #[test]
    fn cookies_and_csrf_values() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tg_session=tg_abc; b=2"),
        );
        assert_eq!(from_cookie(&h).as_deref(), Some("tg_abc"));
        let c = set_cookie("/_tg", Some("tg_abc"), 60, true);
        let c = c.to_str().unwrap();
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/_tg",
            "Max-Age=60",
        ] {
            assert!(c.contains(part), "{c}");
        }
        assert!(
            !set_cookie("/_tg", None, 0, false)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
        assert_ne!(csrf("a"), csrf("b"));
        assert!(same(&csrf("a"), &csrf("a")) && !same(&csrf("a"), &csrf("b")));
    }

    #[test]
    fn cross_site_posts_are_told_apart() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gw:8080"));
        assert!(
            same_origin(&h, "http"),
            "no browser headers: a form post from curl"
        );
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, "http"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(!same_origin(&h, "http"), "another port or subdomain");
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(
            same_origin(&h, "http"),
            "the page's own form under no-referrer"
        );
        h.remove("sec-fetch-site");
        assert!(
            !same_origin(&h, "http"),
            "no Fetch Metadata: Origin decides"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h, "http"));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://gw:8080"));
        assert!(same_origin(&h, "http"));
    }
}
