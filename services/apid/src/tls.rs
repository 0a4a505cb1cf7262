//! apid's two TLS faces.
//!
//! - Maintenance mode: the identity key firstboot made, no client certificates.
//! - Member mode: a certificate from this machine's CA; client certificates are asked for and,
//!   when presented, must chain to a trusted CA (rustls/webpki checks the chain, validity and
//!   client-auth usage); a connection without one may only redeem a join ticket. apid then
//!   decides on the role and the revocation list ([`uncloud_pki::check_client`]).

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use uncloud_api::tls::{certs_from_pem, key_from_pem, provider, TlsError};

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

pub fn member(
    trusted_cas_der: &[Vec<u8>],
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in trusted_cas_der {
        roots
            .add(ca.clone().into())
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Roots(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_from_pem("the server certificate", cert_pem)?,
            key_from_pem("the server key", key_pem)?,
        )?;
    Ok(Arc::new(config))
}
