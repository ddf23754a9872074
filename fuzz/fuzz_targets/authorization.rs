//! Authorization header values of any bytes: a classification, never a
//! panic; anything called a token has the token's exact shape and digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::auth::{Credential, credential};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else { return };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let schemes = ["token".to_owned(), "bearer".to_owned()];
    if let Credential::Token(digest) = credential(&headers, &schemes) {
        // The word after the scheme is the token: one of the exact shape,
        // and the digest is its own.
        let text = std::str::from_utf8(data).unwrap();
        let key = text.split_ascii_whitespace().nth(1).unwrap();
        assert_eq!(key.len(), tokengate::token::TOKEN_LEN);
        assert!(key.starts_with("tg_"));
        let token = tokengate::token::Token::parse(key).unwrap();
        assert_eq!(token.digest(), digest);
    }
});
