//! TLS for both ends of the API, rustls on ring.
//!
//! A client checks apid one of three ways:
//! - **maintenance mode** ([`client_pinned`]): the server's self-signed certificate is accepted
//!   only if the SHA-256 of its public key is the fingerprint the machine's console shows; the
//!   handshake signature is still verified ([`Signatures`]), so only the key's holder passes;
//! - **redeeming a ticket** ([`client_issuer`]): the server's certificate must be issued by the
//!   CA whose fingerprint the ticket names;
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

/// Checks a handshake's signature against the certificate's key with ring: the proof that
/// the peer holds that key, the same for every verifier here and in apid.
#[derive(Debug)]
pub struct Signatures(Arc<CryptoProvider>);

impl Default for Signatures {
    fn default() -> Self {
        Signatures(provider())
    }
}

impl Signatures {
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a pinned server must show.
#[derive(Debug, Clone, Copy)]
enum Pin {
    /// Its own key has this SPKI fingerprint (a fresh machine, checked against its console).
    Key(Fingerprint),
    /// Its certificate was issued by the CA with this SPKI fingerprint, the CA certificate sent
    /// along in the chain (a ticket's issuer). Validity dates are not checked: a joining
    /// machine (a Raspberry Pi without a real-time clock) may not know the time yet, and the
    /// pin is what identifies the issuer.
    Issuer(Fingerprint),
}

/// Accepts a server by a pinned fingerprint; names and dates play no part.
#[derive(Debug)]
struct Pinned {
    pin: Pin,
    signatures: Signatures,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let is = |cert: &CertificateDer<'_>, pin: Fingerprint| {
            Fingerprint::of_certificate(cert).is_ok_and(|f| f == pin)
        };
        let ok = match self.pin {
            Pin::Key(pin) => is(end_entity, pin),
            Pin::Issuer(pin) => intermediates
                .iter()
                .any(|ca| is(ca, pin) && uncloud_pki::issued_by(end_entity, ca)),
        };
        if ok {
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
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

fn pinned(pin: Pin) -> Result<Arc<ClientConfig>, TlsError> {
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            pin,
            signatures: Signatures::default(),
        }))
        .with_no_client_auth();
    Ok(Arc::new(config))
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

/// For a joining machine redeeming a ticket: the issuer is known by its CA's fingerprint (in
/// the ticket); no client certificate.
pub fn client_issuer(pin: Fingerprint) -> Result<Arc<ClientConfig>, TlsError> {
    pinned(Pin::Issuer(pin))
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?)
}

/// For a machine in maintenance mode, known by its key's fingerprint; no client certificate.
pub fn client_pinned(pin: Fingerprint) -> Result<Arc<ClientConfig>, TlsError> {
    pinned(Pin::Key(pin))
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
