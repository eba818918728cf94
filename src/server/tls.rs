//! TLS on the client port (rustls; TLS 1.2 and 1.3 only): the server's certificate and key, the
//! CA that signs client certificates, and their reload on SIGHUP. A reload swaps the
//! configuration new connections are accepted with; sessions already open keep theirs.

use crate::config::TlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::{Arc, RwLock};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tracing::info;

/// The acceptor new connections use, replaced as a whole by [`Tls::reload`].
pub(crate) struct Tls {
    config: TlsConfig,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    pub(crate) fn new(config: &TlsConfig) -> Result<Tls, String> {
        let acceptor = TlsAcceptor::from(server_config(config)?);
        info!(
            cert = %config.cert.display(),
            client_ca = config.client_ca.as_ref().map(|p| p.display().to_string()),
            require_client_cert = ?config.require_client_cert,
            "TLS enabled: TLS 1.2 and 1.3 only"
        );
        Ok(Tls {
            config: config.clone(),
            acceptor: RwLock::new(acceptor),
        })
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().expect("tls lock").clone()
    }

    /// Reads the certificate, key and client CA again. On error the ones in use stay.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let fresh = TlsAcceptor::from(server_config(&self.config)?);
        *self.acceptor.write().expect("tls lock") = fresh;
        info!(cert = %self.config.cert.display(), "TLS certificate reloaded");
        Ok(())
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the {what} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn server_config(c: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&c.cert, "certificate file")?;
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .map_err(|e| format!("cannot read the private key {}: {e}", c.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match &c.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "client CA file")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            }
            // A certificate is asked of every client but needed only by the roles listed in
            // require_client_cert (checked at Hello); one that is presented must be valid.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "certificate {} and key {}: {e}",
            c.cert.display(),
            c.key.display()
        )
    })?;
    Ok(Arc::new(config))
}
