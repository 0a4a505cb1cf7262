//! The machine's own TLS key and self-signed certificate, which apid presents in maintenance
//! mode. The user checks it by the SHA-256 fingerprint the console shows, as with SSH's host
//! keys.

use base64::Engine;

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

/// SHA-256 of the (first) certificate's DER in `pem`, as colon-separated upper-case hex.
pub fn fingerprint(pem: &str) -> Result<String, TlsError> {
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = pem
        .find(begin)
        .ok_or(TlsError::NotPem("no BEGIN CERTIFICATE"))?
        + begin.len();
    let len = pem[start..]
        .find(end)
        .ok_or(TlsError::NotPem("no END CERTIFICATE"))?;
    let b64: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| TlsError::NotPem("not base64"))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    Ok(digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_has_a_stable_fingerprint_of_its_der() {
        let id = generate("vps-1").unwrap();
        assert!(
            id.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{}",
            id.key_pem
        );
        let fp = fingerprint(&id.cert_pem).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
        assert_eq!(fp, fingerprint(&id.cert_pem).unwrap());
        // Another key, another fingerprint.
        assert_ne!(
            fp,
            fingerprint(&generate("vps-1").unwrap().cert_pem).unwrap()
        );
    }

    #[test]
    fn the_fingerprint_is_sha256_of_the_der() {
        // "hello" as the DER, base64 "aGVsbG8=": sha256 starts 2C:F2:4D:BA.
        let pem = "-----BEGIN CERTIFICATE-----\naGVs\nbG8=\n-----END CERTIFICATE-----\n";
        assert!(fingerprint(pem).unwrap().starts_with("2C:F2:4D:BA:5F:B0"));
    }

    #[test]
    fn not_pem_is_an_error() {
        assert!(fingerprint("nothing").is_err());
        assert!(fingerprint("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err());
    }
}
