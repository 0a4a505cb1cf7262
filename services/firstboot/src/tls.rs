//! The machine's own TLS key and self-signed certificate, which apid presents in maintenance
//! mode. The user checks it by the SHA-256 fingerprint the console shows, as with SSH's host
//! keys.

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make the key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate is not PEM: {0}")]
    NotPem(&'static str),
}

/// A PEM private key (ECDSA P-256) and a self-signed PEM certificate for it.
pub struct Identity {
    pub key_pem: String,
    pub cert_pem: String,
}

/// Makes a new key and a certificate naming `hostname`. Its validity is rcgen's default
/// (1975 to 4096): a Raspberry Pi has no clock battery, and its first boot may be in 1970.
pub fn generate(hostname: &str) -> Result<Identity, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "Uncloud machine (maintenance mode)",
    );
    let cert = params.self_signed(&key)?;
    Ok(Identity {
        key_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
    })
}

/// The fingerprint `uc` pins a fresh machine by: SHA-256 of the certificate's public key
/// (SubjectPublicKeyInfo), as `sha256:` and 64 lower-case hex digits. The key, not the whole
/// certificate: the certificate may be re-issued for the same key.
pub fn fingerprint(pem: &str) -> Result<String, TlsError> {
    let der = uncloud_pki::pem_to_der(pem).map_err(|_| TlsError::NotPem("no PEM certificate"))?;
    uncloud_pki::Fingerprint::of_certificate(&der)
        .map(|f| f.to_string())
        .map_err(|_| TlsError::NotPem("not an X.509 certificate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_has_a_stable_fingerprint_of_its_key() {
        let id = generate("vps-1").unwrap();
        assert!(
            id.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{}",
            id.key_pem
        );
        let fp = fingerprint(&id.cert_pem).unwrap();
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
        assert_eq!(fp, fingerprint(&id.cert_pem).unwrap());
        // Another key, another fingerprint.
        assert_ne!(
            fp,
            fingerprint(&generate("vps-1").unwrap().cert_pem).unwrap()
        );
    }

    #[test]
    fn the_fingerprint_is_what_uc_pins_the_key_by() {
        // The same digest `uc machine init --fingerprint` compares with what the machine
        // shows in the TLS handshake: the SPKI's, not the certificate's.
        let id = generate("vps-1").unwrap();
        let key = rcgen::KeyPair::from_pem(&id.key_pem).unwrap();
        use rcgen::PublicKeyData;
        let spki = uncloud_pki::Fingerprint::of_spki(&key.subject_public_key_info());
        assert_eq!(fingerprint(&id.cert_pem).unwrap(), spki.to_string());
        let parsed: uncloud_pki::Fingerprint = fingerprint(&id.cert_pem).unwrap().parse().unwrap();
        assert_eq!(parsed, spki);
    }

    #[test]
    fn not_pem_is_an_error() {
        assert!(fingerprint("nothing").is_err());
        assert!(fingerprint("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err());
    }
}
