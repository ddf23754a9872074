//! The PostgreSQL URL's TLS settings: libpq's `sslmode` and `sslrootcert`,
//! read here and taken out of the URL, since the driver knows neither the
//! verification modes nor `sslrootcert` (`store::postgres::tls` verifies).

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => Mode::Disable,
            "prefer" | "allow" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is unknown; use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

/// A store URL split into what the driver parses and the TLS settings.
#[derive(Debug)]
pub struct Parsed {
    /// The URL without `sslmode` and `sslrootcert`.
    pub url: String,
    pub mode: Mode,
    pub root_cert: Option<PathBuf>,
}

/// Reads `sslmode` and `sslrootcert` from a `postgres://` URL's query or a
/// key=value string. Never repeats the URL in an error: it may hold a
/// password.
pub fn parse(url: &str) -> Result<Parsed, String> {
    let mut mode = Mode::Prefer;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match key.trim() {
            "sslmode" => mode = Mode::parse(value.trim())?,
            "sslrootcert" => root_cert = Some(PathBuf::from(value.trim())),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.contains("://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, v)? {
                        kept.push(pair);
                    }
                }
                match kept.is_empty() {
                    true => base.to_owned(),
                    false => format!("{base}?{}", kept.join("&")),
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, v)? {
                kept.push(pair);
            }
        }
        kept.join(" ")
    };
    if root_cert.is_some() && matches!(mode, Mode::Disable | Mode::Prefer | Mode::Require) {
        // libpq verifies the chain whenever a root certificate is given.
        mode = Mode::VerifyCa;
    }
    Ok(Parsed {
        url: rest,
        mode,
        root_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_read_and_taken_out() {
        let p = parse("postgres://u:p@h/db?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(
            (p.mode, p.url.as_str()),
            (Mode::VerifyFull, "postgres://u:p@h/db?application_name=x")
        );
        let p = parse("postgres://h/db?sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            (p.mode, p.url.as_str()),
            (Mode::VerifyCa, "postgres://h/db")
        );
        assert_eq!(p.root_cert, Some(PathBuf::from("/ca.pem")));
        let p = parse("host=h sslmode=require user=u").unwrap();
        assert_eq!((p.mode, p.url.as_str()), (Mode::Require, "host=h user=u"));
        assert_eq!(parse("postgres://h/db").unwrap().mode, Mode::Prefer);
        let e = parse("postgres://u:s3cret@h/db?sslmode=bogus").unwrap_err();
        assert!(e.contains("bogus") && !e.contains("s3cret"), "{e}");
    }
}
