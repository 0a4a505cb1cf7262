//! SHA-256 fingerprints of a certificate's public key (SPKI), the way a user checks a machine
//! (the console banner) and a ticket names the CA of the member that issued it.
//!
//! The SPKI rather than the whole certificate: a certificate can be re-issued for the same key
//! (renewal, another name) and still match.

use std::fmt;
use std::str::FromStr;

use crate::PkiError;

/// SHA-256 of a DER `SubjectPublicKeyInfo`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of the public key in a DER certificate.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Fingerprint, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        Ok(Fingerprint::of_spki(cert.tbs_certificate.subject_pki.raw))
    }

    /// The fingerprint of the public half of a PEM private key: to check that a key and a
    /// certificate belong together.
    pub fn of_key_pem(key_pem: &str) -> Result<Fingerprint, PkiError> {
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::BadCertificate(format!("not a usable private key: {e}")))?;
        Ok(Fingerprint::of_spki(&key.subject_public_key_info()))
    }

    /// The fingerprint of a DER `SubjectPublicKeyInfo`.
    pub fn of_spki(spki_der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    /// `sha256:` and 64 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = PkiError;

    /// Accepts what people copy: an optional `sha256:` prefix, hex in either case, with or
    /// without colons between bytes.
    fn from_str(s: &str) -> Result<Self, PkiError> {
        let bad = || PkiError::BadFingerprint(s.chars().take(120).collect());
        let trimmed = s.trim();
        let hex: String = trimmed
            .strip_prefix("sha256:")
            .or_else(|| trimmed.strip_prefix("SHA256:"))
            .unwrap_or(trimmed)
            .chars()
            .filter(|c| *c != ':')
            .collect();
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_people_copy_and_prints_one_form() {
        let f = Fingerprint([0xab; 32]);
        let text = f.to_string();
        assert_eq!(text, format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(text.parse::<Fingerprint>().unwrap(), f);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(colons.parse::<Fingerprint>().unwrap(), f);
        assert_eq!("ab".repeat(32).parse::<Fingerprint>().unwrap(), f);
        for bad in [
            "",
            "sha256:",
            "zz".repeat(32).as_str(),
            &"ab".repeat(31),
            "é".repeat(64).as_str(),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
    }
}
