//! The page's forms: `application/x-www-form-urlencoded`, bounded.

use std::collections::HashMap;

use http::header;
use hyper::body::Incoming;

use crate::gateway::login::{decode_form, read_body};
use crate::gateway::response::LoginRejection;

/// No field of the page's forms is longer: passwords are at most 1024
/// bytes, labels 200 characters, a scope list a few lines.
pub const MAX_FIELD: usize = 4096;

/// Why a form was refused; each is a status of its own.
#[derive(Debug, PartialEq, Eq)]
pub enum FormError {
    /// 415: not a form.
    NotAForm,
    /// 413: the body is over `max`.
    TooLarge,
    /// 400: unreadable, a field twice, or one too long.
    Bad(&'static str),
}

/// The fields of a posted form, each at most once.
pub struct Form(HashMap<String, String>);

impl Form {
    pub async fn read(
        req: http::Request<Incoming>,
        max: u64,
        deadline: std::time::Duration,
    ) -> Result<Self, FormError> {
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(FormError::NotAForm);
        }
        let body = read_body(req, max, deadline).await.map_err(|e| match e {
            LoginRejection::TooLarge => FormError::TooLarge,
            _ => FormError::Bad("The form could not be read."),
        })?;
        Self::parse(&body)
    }

    pub fn parse(body: &[u8]) -> Result<Self, FormError> {
        let mut fields = HashMap::new();
        for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (key, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &b""[..]),
            };
            let bad = |_| FormError::Bad("The form is not valid URL encoding.");
            let (key, value) = (
                decode_form(key).map_err(bad)?,
                decode_form(value).map_err(bad)?,
            );
            if value.len() > MAX_FIELD {
                return Err(FormError::Bad("A field is too long."));
            }
            if fields.insert(key, value).is_some() {
                return Err(FormError::Bad("A field appears more than once."));
            }
        }
        Ok(Self(fields))
    }

    /// The field, or "" when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_decoded_once_and_bounded() {
        let f = Form::parse(b"a=1+2&b=%C3%A9&c").unwrap();
        assert_eq!(
            (f.get("a"), f.get("b"), f.get("c"), f.get("d")),
            ("1 2", "é", "", "")
        );
        assert!(matches!(Form::parse(b"a=1&a=2"), Err(FormError::Bad(_))));
        assert!(
            matches!(Form::parse(b"a=%FF"), Err(FormError::Bad(_))),
            "not UTF-8"
        );
        let long = format!("a={}", "x".repeat(MAX_FIELD + 1));
        assert!(matches!(
            Form::parse(long.as_bytes()),
            Err(FormError::Bad(_))
        ));
    }
}
