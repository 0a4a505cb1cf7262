//! A certificate bundle as the state keeps it (PEM: the chain, leaf first, then the private
//! key) and what is read from it: the key rustls serves, and the facts people see.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// What a bundle's leaf says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Facts {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Issuer's distinguished name.
    pub issuer: String,
    /// Validity, ms since the Unix epoch.
    pub not_before_ms: u64,
    pub not_after_ms: u64,
    /// Names the leaf covers.
    pub names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("no certificate in the bundle")]
    NoCertificate,
    #[error("no private key in the bundle")]
    NoKey,
    #[error("the private key is not usable: {0}")]
    Key(rustls::Error),
    #[error("the leaf certificate does not parse: {0}")]
    Leaf(String),
    #[error("the private key does not belong to the certificate")]
    Mismatch,
}

/// The bundle of an issued `chain` (PEM, leaf first) and its `key` (PEM).
pub fn compose(chain: &str, key: &str) -> String {
    let mut out = chain.trim_end().to_string();
    out.push('\n');
    out.push_str(key.trim_end());
    out.push('\n');
    out
}

/// Reads a bundle: the key to serve and the leaf's facts.
pub fn read(bundle: &str) -> Result<(Arc<CertifiedKey>, Facts), BundleError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let leaf = chain.first().ok_or(BundleError::NoCertificate)?;
    let facts = facts(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(bundle.as_bytes()).map_err(|_| BundleError::NoKey)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(BundleError::Key)?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => {}
        // A key whose public half rustls cannot derive is not a mismatch.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => return Err(BundleError::Mismatch),
    }
    Ok((Arc::new(certified), facts))
}

fn facts(leaf: &CertificateDer<'_>) -> Result<Facts, BundleError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| BundleError::Leaf(e.to_string()))?;
    let ms = |t: x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64) * 1000;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    Ok(Facts {
        serial: cert.raw_serial_as_string().replace(':', ""),
        issuer: cert.issuer().to_string(),
        not_before_ms: ms(cert.validity().not_before),
        not_after_ms: ms(cert.validity().not_after),
        names,
    })
}

/// A fresh private key and the CSR for `hostname` (DER), and the key as PEM.
pub fn request(hostname: &str) -> Result<(Vec<u8>, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

/// A self-signed bundle for `hostname` (the operator's fallback), valid for a year.
pub fn self_signed(hostname: &str) -> Result<String, rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.self_signed(&key)?;
    Ok(compose(&cert.pem(), &key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_bundle_reads_back_with_its_facts() {
        let b = self_signed("app.example.com").unwrap();
        let (key, facts) = read(&b).unwrap();
        assert_eq!(key.cert.len(), 1);
        assert_eq!(facts.names, ["app.example.com"]);
        assert!(facts.not_after_ms > facts.not_before_ms + 364 * 86_400_000);
        assert!(!facts.serial.is_empty() && !facts.serial.contains(':'));
        assert!(facts.issuer.contains("app.example.com"), "{}", facts.issuer);
    }

    #[test]
    fn a_damaged_or_mismatched_bundle_is_refused_with_a_reason() {
        let a = self_signed("a.example.com").unwrap();
        let b = self_signed("b.example.com").unwrap();
        let key_of_b = &b[b.find("-----BEGIN PRIVATE KEY").unwrap()..];
        let cert_of_a = &a[..a.find("-----BEGIN PRIVATE KEY").unwrap()];
        assert!(matches!(
            read(&compose(cert_of_a, key_of_b)),
            Err(BundleError::Mismatch)
        ));
        assert!(matches!(read(cert_of_a), Err(BundleError::NoKey)));
        assert!(matches!(read(key_of_b), Err(BundleError::NoCertificate)));
        assert!(read("garbage").is_err());
        let (csr, key) = request("app.example.com").unwrap();
        assert!(!csr.is_empty() && key.contains("PRIVATE KEY"));
    }
}
