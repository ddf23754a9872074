//! TLS termination: certificate and key PEM files → a rustls acceptor
//! speaking TLS 1.2 and 1.3 with ALPN `h2` and `http/1.1`. Built at start
//! and again on each reload, so renewed certificates are picked up by SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The cause is in the message, not a source: it would print twice.
    #[error("cannot read {path} ({key}): {cause}")]
    Read {
        path: PathBuf,
        key: &'static str,
        cause: String,
    },
    #[error("no PEM certificate in {path} (server.tls_cert)")]
    NoCertificate { path: PathBuf },
    #[error(
        "no private key in {path} (server.tls_key): it must hold a PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY), not a certificate"
    )]
    NoKey { path: PathBuf },
    #[error(
        "the certificate and key do not work together: {0}; check that tls_key is the key of tls_cert"
    )]
    Rustls(#[from] rustls::Error),
}

pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        e => read_error(&files.key, "server.tls_key", e),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_error(path: &Path, key: &'static str, e: pem::Error) -> TlsError {
    let cause = match e {
        pem::Error::Io(io) => io.to_string(),
        e => format!("not valid PEM ({e})"),
    };
    TlsError::Read {
        path: path.to_path_buf(),
        key,
        cause,
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |e| read_error(path, "server.tls_cert", e);
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        TlsFiles {
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }

    #[test]
    fn a_certificate_given_as_the_key_is_named_for_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), made.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), made.signing_key.serialize_pem()).unwrap();
        assert!(acceptor(&files(dir.path(), "cert.pem", "key.pem")).is_ok());
        let e = acceptor(&files(dir.path(), "cert.pem", "cert.pem"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("no private key in "), "{e}");
        assert!(e.contains("cert.pem (server.tls_key)"), "{e}");
    }

    #[test]
    fn a_missing_file_says_so_once() {
        let dir = tempfile::tempdir().unwrap();
        let e = acceptor(&files(dir.path(), "gone.pem", "key.pem"))
            .err()
            .unwrap();
        let text = format!("{:#}", anyhow::Error::from(e));
        assert!(text.contains("gone.pem (server.tls_cert)"), "{text}");
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
    }
}
