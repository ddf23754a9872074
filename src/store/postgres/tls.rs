//! TLS to the database over rustls, with libpq's `sslmode`s. The driver
//! knows only disable/prefer/require, and neither verification mode nor
//! `sslrootcert`, so those two parameters are read here and taken out of
//! the URL before the driver parses it.
//!
//! - `disable`: plain TCP.
//! - `prefer` (libpq's default) and `require`: encrypted, the certificate
//!   not checked (as libpq does without a root certificate); `prefer`
//!   falls back to plain TCP when the server has no TLS.
//! - `verify-ca`: the certificate must chain to a trusted root.
//! - `verify-full`: that, and it must name the host connected to.
//!
//! Trusted roots: the file `sslrootcert` names (PEM), else the Web PKI's.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

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

    /// What the driver is told: it negotiates, this module verifies.
    pub fn driver(self) -> SslMode {
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
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

/// The connector for `parsed`'s mode and roots.
pub fn connector(parsed: &Parsed) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = match parsed.mode {
        Mode::Disable | Mode::Prefer | Mode::Require => Arc::new(Lenient {
            chain: None,
            provider,
        }),
        Mode::VerifyCa | Mode::VerifyFull => {
            let roots = Arc::new(roots(parsed)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
            match parsed.mode {
                Mode::VerifyCa => Arc::new(Lenient {
                    chain: Some(webpki),
                    provider,
                }),
                _ => webpki,
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn roots(parsed: &Parsed) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = &parsed.root_cert else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let unreadable = |e: &dyn std::fmt::Display| {
        format!(
            "sslrootcert {}: {e}; name a PEM file of CA certificates",
            path.display()
        )
    };
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in it"));
    }
    Ok(roots)
}

/// `require` and `verify-ca`: the handshake must be signed by the key of
/// the certificate presented, but who that certificate names is not
/// checked; with `chain` (verify-ca), it must chain to a trusted root.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

/// The two handshake-signature checks of `ServerCertVerifier`, each with
/// the provider's own algorithms: the same method for TLS 1.2 and 1.3.
macro_rules! signature_checks {
    ($($method:ident => $check:path),*) => {$(
        fn $method(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            $check(message, cert, dss, &self.provider.signature_verification_algorithms)
        }
    )*};
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    signature_checks!(
        verify_tls12_signature => rustls::crypto::verify_tls12_signature,
        verify_tls13_signature => rustls::crypto::verify_tls13_signature
    );

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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
