//! apid's two TLS faces.
//!
//! - Maintenance mode: the identity key firstboot made, no client certificates.
//! - Member mode: a certificate from this machine's CA, sent with the CA certificate (a
//!   joining machine pins the CA by its fingerprint). A client certificate is asked for and,
//!   when presented, the handshake proves the client holds its key ([`ProofOfKey`]); whether
//!   the certificate is any good (issued by a CA of a machine in the state, valid, for
//!   clients, not revoked, with a role) is decided per connection by
//!   [`uncloud_pki::check_client`] against the current state, because the set of trusted CAs
//!   changes as machines join and leave. A connection without one may only redeem a ticket.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use uncloud_api::tls::{certs_from_pem, key_from_pem, provider, Signatures, TlsError};

pub fn maintenance(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            certs_from_pem("the identity certificate", cert_pem)?,
            key_from_pem("the identity key", key_pem)?,
        )?;
    Ok(Arc::new(config))
}

/// `chain_pem`: the server certificate, then the CA certificate.
pub fn member(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(ProofOfKey(Signatures::default())))
        .with_single_cert(
            certs_from_pem("the server certificate", chain_pem)?,
            key_from_pem("the server key", key_pem)?,
        )?;
    Ok(Arc::new(config))
}

/// Checks only that the client holds the key of the certificate it shows; apid decides on
/// the certificate itself once the handshake is done.
#[derive(Debug)]
struct ProofOfKey(Signatures);

impl ClientCertVerifier for ProofOfKey {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}
