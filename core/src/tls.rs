//! TLS to the cluster with rustls (cargo feature `tls-rustls`): a
//! [`TlsConfig`] from PEM files, turned into the driver's `TlsContext`.
//!
//! ```no_run
//! use scylla::client::session_builder::SessionBuilder;
//! use tower_cql_core::tls::TlsConfig;
//!
//! # async fn demo() -> Result<(), tower_cql_core::CqlError> {
//! let tls = TlsConfig::new()
//!     .ca_file("/etc/scylla/ca.pem")?
//!     // mutual TLS, if the cluster asks for a client certificate:
//!     .client_identity_files("/etc/app/client.pem", "/etc/app/client.key")?
//!     .build()?;
//! let session = SessionBuilder::new()
//!     .known_node("10.0.0.1:9142")
//!     .tls_context(Some(tls))
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Nodes are verified against the given CA only (not the system roots):
//! the certificate must name the node's IP address (a CQL driver connects
//! to addresses learned from the cluster, not to host names). The private
//! key is held only inside the rustls configuration; `Debug` shows how
//! many CA certificates there are and whether a client identity is set,
//! never the key.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use scylla::client::session::TlsContext;

use crate::error::{CqlError, ErrorKind};

/// TLS settings for a session: the CA that signed the nodes'
/// certificates, and optionally a client identity for mutual TLS.
#[derive(Clone, Default)]
pub struct TlsConfig {
    roots: Vec<CertificateDer<'static>>,
    client: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_certificates", &self.roots.len())
            .field(
                "client_identity",
                &self
                    .client
                    .as_ref()
                    .map(|(chain, _)| format!("{} certificate(s), key <redacted>", chain.len())),
            )
            .finish()
    }
}

fn bad(message: String) -> CqlError {
    CqlError::new(ErrorKind::BadRequest, message)
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, CqlError> {
    std::fs::read(path).map_err(|e| {
        bad(format!(
            "TLS: cannot read the {what} file {}: {e}",
            path.display()
        ))
    })
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, CqlError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("TLS: the {what} is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(format!(
            "TLS: no certificate found in the {what}; pass PEM text with \
             -----BEGIN CERTIFICATE----- blocks"
        )));
    }
    Ok(certs)
}

impl TlsConfig {
    /// No CA yet: add one with [`TlsConfig::ca_pem`] or
    /// [`TlsConfig::ca_file`].
    pub fn new() -> TlsConfig {
        TlsConfig::default()
    }

    /// Trusts the CA certificate(s) in `pem`.
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Result<TlsConfig, CqlError> {
        self.roots
            .extend(certificates(pem.as_ref(), "CA certificate")?);
        Ok(self)
    }

    /// Trusts the CA certificate(s) in the PEM file at `path`.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<TlsConfig, CqlError> {
        let pem = read(path.as_ref(), "CA certificate")?;
        self.ca_pem(pem)
    }

    /// Presents this certificate chain and private key (PKCS#8, SEC1 or
    /// PKCS#1 PEM) when the cluster asks for a client certificate.
    pub fn client_identity(
        mut self,
        cert_chain_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<TlsConfig, CqlError> {
        let chain = certificates(cert_chain_pem.as_ref(), "client certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_ref()).map_err(|_| {
            // the key's bytes stay out of the message
            bad(
                "TLS: no private key found in the client key PEM; pass a PKCS#8, SEC1 or \
                 PKCS#1 key (-----BEGIN PRIVATE KEY----- or similar)"
                    .to_string(),
            )
        })?;
        self.client = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// [`TlsConfig::client_identity`] from two PEM files.
    pub fn client_identity_files(
        self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, CqlError> {
        let chain = read(cert_chain.as_ref(), "client certificate")?;
        let key = read(key.as_ref(), "client key")?;
        self.client_identity(chain, key)
    }

    /// The driver's TLS context, for `SessionBuilder::tls_context`.
    /// Fails with `BadRequest` when no CA was given, or when rustls
    /// refuses a certificate or the key.
    pub fn build(&self) -> Result<TlsContext, CqlError> {
        if self.roots.is_empty() {
            return Err(bad(
                "TLS: no CA certificate; call ca_pem or ca_file with the CA that signed \
                 the nodes' certificates"
                    .to_string(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in &self.roots {
            roots
                .add(cert.clone())
                .map_err(|e| bad(format!("TLS: the CA certificate was refused: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    bad(format!(
                        "TLS: the client certificate and key do not fit together: {e}"
                    ))
                })?,
        };
        Ok(TlsContext::Rustls023(Arc::new(config)))
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    const CA: &str = include_str!("../../testkit/certs/ca.pem");
    const KEY: &str = include_str!("../../testkit/certs/client.key");
    const CERT: &str = include_str!("../../testkit/certs/client.pem");

    #[test]
    fn refuses_what_cannot_work_with_a_message_that_says_what_to_do() {
        let Err(err) = TlsConfig::new().build() else {
            panic!("built without a CA")
        };
        assert_eq!(err.kind(), ErrorKind::BadRequest);
        assert!(err.to_string().contains("call ca_pem or ca_file"), "{err}");
        let err = TlsConfig::new().ca_pem("not a certificate").unwrap_err();
        assert!(err.to_string().contains("no certificate found"), "{err}");
        let err = TlsConfig::new().ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let err = TlsConfig::new()
            .client_identity(CERT, "garbage")
            .unwrap_err();
        assert!(err.to_string().contains("no private key"), "{err}");
    }

    #[test]
    fn builds_and_never_shows_the_key() {
        let config = TlsConfig::new()
            .ca_pem(CA)
            .unwrap()
            .client_identity(CERT, KEY)
            .unwrap();
        config.build().unwrap();
        let debug = format!("{config:?}");
        assert!(debug.contains("ca_certificates: 1"), "{debug}");
        assert!(debug.contains("key <redacted>"), "{debug}");
        let key_body = KEY.lines().nth(1).unwrap();
        assert!(!debug.contains(key_body));
    }
}
