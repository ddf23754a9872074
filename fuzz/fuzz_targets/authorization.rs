//! Authorization header values of any bytes: a classification, never a
//! panic; anything called a token has the token's exact shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::auth::{Credential, credential};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else { return };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let schemes = ["token".to_owned(), "bearer".to_owned()];
    if let Credential::Token(token) = credential(&headers, &schemes) {
        let text = token.expose();
        assert_eq!(text.len(), tokengate::token::TOKEN_LEN);
        assert!(text.starts_with("tg_"));
        assert!(std::str::from_utf8(data).unwrap().contains(text));
    }
});
