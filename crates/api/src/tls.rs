//! TLS for both ends of the API, rustls on ring.
//!
//! A client checks apid one of two ways:
//! - **maintenance mode**: the server's self-signed certificate is accepted only if the SHA-256
//!   of its public key is the fingerprint the machine's console shows ([`PinnedKey`]); the
//!   handshake signature is still verified, so only the key's holder passes;
//! - **member mode**: the server's certificate must chain to one of the network's machine CAs
//!   the client holds ([`NetworkServer`]). Names are not checked: a machine is reached by many
//!   addresses (LAN, public, behind NAT) and every certificate those CAs issue is a machine of
//!   the network, which is the identity that matters.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use uncloud_pki::Fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("the network CA certificate is not usable: {0}")]
    Roots(String),
}

/// The one crypto provider: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM certificates to DER.
pub fn certs_from_pem(
    what: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        what,
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// A PEM private key to DER.
pub fn key_from_pem(what: &'static str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        reason: e.to_string(),
    })
}

/// Accepts exactly one server key, by SPKI fingerprint.
#[derive(Debug)]
pub struct PinnedKey {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts a server certificate that chains to one of the network's CAs, whatever its names.
#[derive(Debug)]
pub struct NetworkServer {
    inner: Arc<WebPkiServerVerifier>,
}

impl NetworkServer {
    pub fn new(cas: &[CertificateDer<'static>]) -> Result<NetworkServer, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots
                .add(ca.clone())
                .map_err(|e| TlsError::Roots(e.to_string()))?;
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Roots(e.to_string()))?;
        Ok(NetworkServer { inner })
    }
}

impl ServerCertVerifier for NetworkServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts a server whose certificate was issued by the CA with this SPKI fingerprint, the CA
/// certificate sent along in the chain. Validity dates are not checked: a joining machine
/// (a Raspberry Pi without a real-time clock) may not know the time yet, and the pin is
/// what identifies the issuer.
#[derive(Debug)]
pub struct PinnedIssuer {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedIssuer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|ca| Fingerprint::of_certificate(ca).is_ok_and(|f| f == self.pin));
        match pinned {
            Some(ca) if uncloud_pki::issued_by(end_entity, ca) => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// For a joining machine redeeming a ticket: the issuer is known by its CA's fingerprint (in
/// the ticket); no client certificate.
pub fn client_issuer(pin: Fingerprint) -> Result<Arc<ClientConfig>, TlsError> {
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedIssuer {
            pin,
            provider: provider(),
        }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?)
}

/// For a machine in maintenance mode, known by its key's fingerprint; no client certificate.
pub fn client_pinned(pin: Fingerprint) -> Result<Arc<ClientConfig>, TlsError> {
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedKey {
            pin,
            provider: provider(),
        }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// For a member: trusts the network's CAs (PEM), authenticates with a client certificate
/// (PEM) and its key.
pub fn client_member(
    cas_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let cas = certs_from_pem("the network CA certificates", cas_pem)?;
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NetworkServer::new(&cas)?))
        .with_client_auth_cert(
            certs_from_pem("the client certificate", cert_pem)?,
            key_from_pem("the client key", key_pem)?,
        )?;
    Ok(Arc::new(config))
}

/// For a member, without a client certificate (redeeming a ticket).
pub fn client_anonymous(cas_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let cas = certs_from_pem("the network CA certificates", cas_pem)?;
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NetworkServer::new(&cas)?))
        .with_no_client_auth();
    Ok(Arc::new(config))
}
