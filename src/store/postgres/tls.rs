//! TLS to the database over rustls, with libpq's `sslmode`s. The driver
//! knows only disable/prefer/require, and neither verification mode nor
//! `sslrootcert`, so the config reads those two parameters and takes them
//! out of the URL (`config::database`); this module verifies.
//!
//! - `disable`: plain TCP.
//! - `prefer` (libpq's default) and `require`: encrypted, the certificate
//!   not checked (as libpq does without a root certificate); `prefer`
//!   falls back to plain TCP when the server has no TLS.
//! - `verify-ca`: the certificate must chain to a trusted root.
//! - `verify-full`: that, and it must name the host connected to.
//!
//! Trusted roots: the file `sslrootcert` names (PEM), else the Web PKI's.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use crate::config::database::{Mode, Parsed, parse};

/// What the driver is told: it negotiates, this module verifies.
pub fn driver_mode(mode: Mode) -> SslMode {
    match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    }
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
