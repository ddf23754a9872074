//! The first phase: a request target every later decision can read one
//! way only, and its canonical path.

use http::{Method, Request, Version, header};

use super::response::Rejection;
use crate::request::canonical::canonicalize;
use crate::request::headers;

/// Checks the method, `Host` and request target, and returns the canonical
/// path. A path over `max_path` is refused first: everything after this
/// (canonicalizing, pattern matching) then works on bounded input.
pub fn canonical_path<B>(req: &Request<B>, max_path: usize) -> Result<String, Rejection> {
    if req.uri().path().len() > max_path {
        return Err(Rejection::PathTooLong);
    }
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err(Rejection::MethodNotAllowed {
            allow: "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        });
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::BadRequest("More than one Host header."));
    }
    // The upstream may route on the host, or build URLs from it: what it
    // gets must split into host and port the one way the gateway reads it.
    if host.is_some_and(|host| !headers::is_authority(host.as_bytes())) {
        return Err(Rejection::BadRequest(
            "The Host header is not a valid host.",
        ));
    }
    if req
        .uri()
        .authority()
        .is_some_and(|a| !headers::is_authority(a.as_str().as_bytes()))
    {
        return Err(Rejection::BadRequest(
            "The request target's authority is not a valid host.",
        ));
    }
    // In HTTP/1 an authority in the target is absolute-form; in HTTP/2 it is
    // :authority. Either way a Host header must not name something else
    // (RFC 9112 §3.2.2, RFC 9113 §8.3.1), and an HTTP/1 target naming a
    // host needs a Host header to compare with.
    match (req.uri().authority(), host) {
        (Some(authority), Some(host))
            if !authority
                .as_str()
                .eq_ignore_ascii_case(host.to_str().unwrap_or("")) =>
        {
            return Err(Rejection::BadRequest(
                "The request target names another host.",
            ));
        }
        (Some(_), None) if req.version() < Version::HTTP_2 => {
            return Err(Rejection::BadRequest("Missing Host header."));
        }
        (None, None) if req.version() == Version::HTTP_11 => {
            return Err(Rejection::BadRequest("Missing Host header."));
        }
        (None, None) if req.version() >= Version::HTTP_2 => {
            return Err(Rejection::BadRequest("Missing :authority."));
        }
        _ => {}
    }
    canonical_uri_path(req.uri(), max_path)
}

/// The canonical path of `uri`'s path, bounded by `max_path`: what every
/// decision reads, for a request or for one a proxy describes.
pub fn canonical_uri_path(uri: &http::Uri, max_path: usize) -> Result<String, Rejection> {
    if uri.path().len() > max_path {
        return Err(Rejection::PathTooLong);
    }
    canonicalize(uri.path()).map_err(|e| {
        tracing::debug!(reason = %e, "refused request path");
        Rejection::BadRequest("The request path is not allowed.")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_that_could_be_read_two_ways_are_refused() {
        let req = |method: &str, uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().method(method).uri(uri);
            for h in hosts {
                b = b.header("host", *h);
            }
            b.body(()).unwrap()
        };
        assert_eq!(
            canonical_path(&req("GET", "/a/%62", &["gw"]), 8192).unwrap(),
            "/a/b"
        );
        assert!(
            canonical_path(&req("GET", "/a", &[]), 8192).is_err(),
            "missing Host"
        );
        assert!(
            canonical_path(&req("GET", "/a", &["gw", "gw"]), 8192).is_err(),
            "duplicate Host"
        );
        assert!(canonical_path(&req("GET", "http://other/a", &["gw"]), 8192).is_err());
        assert_eq!(
            canonical_path(&req("GET", "http://gw/a", &["gw"]), 8192).unwrap(),
            "/a"
        );
        assert!(canonical_path(&req("CONNECT", "gw:443", &["gw"]), 8192).is_err());
        assert!(canonical_path(&req("TRACE", "/", &["gw"]), 8192).is_err());
        assert!(canonical_path(&req("OPTIONS", "*", &["gw"]), 8192).is_err());
        let http10 = |uri: &str, hosts: &[&str]| {
            let mut r = req("GET", uri, hosts);
            *r.version_mut() = Version::HTTP_10;
            r
        };
        assert_eq!(canonical_path(&http10("/a", &[]), 8192).unwrap(), "/a");
        assert!(
            canonical_path(&http10("http://evil/a", &[]), 8192).is_err(),
            "absolute-form without Host"
        );
        let h2 = |uri: &str, hosts: &[&str]| {
            let mut r = req("GET", uri, hosts);
            *r.version_mut() = Version::HTTP_2;
            r
        };
        assert_eq!(
            canonical_path(&h2("https://gw/a", &[]), 8192).unwrap(),
            "/a"
        );
        assert_eq!(
            canonical_path(&h2("https://gw/a", &["gw"]), 8192).unwrap(),
            "/a"
        );
        assert!(
            canonical_path(&h2("https://gw/a", &["evil"]), 8192).is_err(),
            "Host contradicting :authority"
        );
    }
}
