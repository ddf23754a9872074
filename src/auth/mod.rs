//! Authentication: from the `Authorization` header to an `Identity`, or the
//! reason there is none. Parsing is pure; only a well-formed token with a
//! valid checksum reaches the store.

pub mod cache;
pub mod django;
pub mod password;
pub mod throttle;

use http::header::{self, HeaderMap};

use std::sync::Arc;

use crate::auth::cache::{TokenCache, Verified};
use crate::store::token::{Token, TokenDigest};
use crate::store::{Store, StoreError};

/// What the `Authorization` header offers.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential {
    /// No header, or one with a scheme the gateway does not accept (a
    /// `Basic` header is not a token; DRF treats it the same way).
    Missing,
    /// Our scheme, but not a usable token: no key, extra words, duplicate
    /// headers, a bad checksum, non-ASCII bytes.
    Malformed,
    /// A well-formed token, as the digest the store knows it by.
    Token(TokenDigest),
}

/// `schemes` are lower-cased, as in `AuthConfig`.
pub fn credential(headers: &HeaderMap, schemes: &[String]) -> Credential {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Credential::Missing;
    };
    if values.next().is_some() {
        return Credential::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return Credential::Malformed;
    };
    let mut words = value.split_ascii_whitespace();
    let Some(scheme) = words.next() else {
        return Credential::Missing;
    };
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Credential::Missing;
    }
    match (words.next(), words.next()) {
        (Some(key), None) => Token::digest_of(key)
            .or_else(|| Token::django_digest_of(key))
            .map_or(Credential::Malformed, Credential::Token),
        _ => Credential::Malformed,
    }
}

/// Why a request has no caller: each is answered differently (401 with
/// or without a challenge, or 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No credential in our scheme.
    Missing,
    /// A credential that is malformed, or a token the store does not know
    /// as live.
    Invalid,
    /// The store could not be read.
    StoreUnavailable,
}

/// The caller the request's token belongs to, through `cache`.
pub fn authenticate(
    store: &Store,
    cache: &TokenCache,
    headers: &HeaderMap,
    schemes: &[String],
) -> Result<Arc<Verified>, Unauthenticated> {
    match credential(headers, schemes) {
        Credential::Missing => Err(Unauthenticated::Missing),
        Credential::Malformed => Err(Unauthenticated::Invalid),
        Credential::Token(digest) => verify(store, cache, &digest),
    }
}

/// The caller a token's digest belongs to, through `cache`.
pub fn verify(
    store: &Store,
    cache: &TokenCache,
    digest: &TokenDigest,
) -> Result<Arc<Verified>, Unauthenticated> {
    match cache.verify(store, digest) {
        Ok(Some(identity)) => Ok(identity),
        Ok(None) => Err(Unauthenticated::Invalid),
        // Said once when the link was lost, not once per request.
        Err(e @ StoreError::OutOfTouch { .. }) => {
            tracing::debug!(error = %e, "token not checked");
            Err(Unauthenticated::StoreUnavailable)
        }
        Err(e) => {
            tracing::error!(error = %e, "token lookup failed");
            Err(Unauthenticated::StoreUnavailable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn schemes() -> Vec<String> {
        vec!["token".into(), "bearer".into()]
    }

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn accepted_schemes_in_any_case() {
        let t = Token::generate().unwrap();
        for scheme in ["Token", "token", "TOKEN", "Bearer", "bearer"] {
            let h = with(&[format!("{scheme} {}", t.expose()).as_bytes()]);
            assert_eq!(credential(&h, &schemes()), Credential::Token(t.digest()));
        }
    }

    #[test]
    fn missing_and_foreign_schemes_are_not_provided() {
        assert_eq!(
            credential(&HeaderMap::new(), &schemes()),
            Credential::Missing
        );
        assert_eq!(
            credential(&with(&[b"Basic dXNlcjpwdw=="]), &schemes()),
            Credential::Missing
        );
        assert_eq!(credential(&with(&[b""]), &schemes()), Credential::Missing);
    }

    #[test]
    fn malformed_credentials_are_invalid() {
        let t = Token::generate().unwrap();
        let good = format!("Token {}", t.expose());
        let cases: Vec<Vec<u8>> = vec![
            b"Token".to_vec(),
            b"Token ".to_vec(),
            b"Token abc".to_vec(),
            format!("Token {} extra", t.expose()).into_bytes(),
            b"Token tg_\xff\xfe".to_vec(),
        ];
        for case in cases {
            assert_eq!(
                credential(&with(&[&case]), &schemes()),
                Credential::Malformed,
                "{}",
                String::from_utf8_lossy(&case)
            );
        }
        assert_eq!(
            credential(&with(&[good.as_bytes(), good.as_bytes()]), &schemes()),
            Credential::Malformed,
            "duplicate Authorization headers are ambiguous"
        );
    }
}
