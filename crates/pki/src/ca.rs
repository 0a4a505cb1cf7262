//! A machine's own certificate authority and the certificates it issues.
//!
//! Every member makes its CA key when it creates or joins a network; the key never leaves the
//! machine. The CA certificate is recorded in the state, where every machine reads the set of
//! trusted CAs (decision 0009). A CA issues:
//! - its machine's **server** certificate (apid's TLS on the public port), and
//! - **client** certificates for `uc`, with the role in the subject's Organization and the
//!   client-auth extended key usage only.
//!
//! Keys are ECDSA P-256 (rcgen on ring).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SubjectPublicKeyInfo,
};
use time::{Duration, OffsetDateTime};

use crate::fingerprint::Fingerprint;
use crate::{PkiError, Role};

/// How long a machine CA is valid. Long: renewing it would mean re-issuing every certificate
/// it signed; removing the machine from the state is what ends its trust.
pub const CA_VALIDITY: Duration = Duration::days(20 * 365);
/// Default validity of a client certificate; `uc` renews before it ends.
pub const CLIENT_VALIDITY: Duration = Duration::days(365);
/// Validity of a machine's server certificate (re-issued at every apid start).
pub const SERVER_VALIDITY: Duration = Duration::days(365);
/// Clocks differ (a Pi without a real-time clock): certificates start this much in the past.
pub const BACKDATE: Duration = Duration::hours(48);

/// A machine's CA: key and certificate.
pub struct MachineCa {
    key: KeyPair,
    cert_pem: String,
    cert_der: Vec<u8>,
}

/// A certificate and, when this side made the key, the key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Option<String>,
}

impl MachineCa {
    /// Makes a new CA for `machine_id` of `network_id`.
    pub fn generate(
        network_id: &str,
        machine_id: &str,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::from)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("uncloud machine {machine_id}"));
        dn.push(
            DnType::OrganizationName,
            format!("uncloud network {network_id}"),
        );
        params.distinguished_name = dn;
        // It signs leaf certificates only: no machine can make another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        Ok(MachineCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// Loads a CA from its PEM key and certificate (as [`MachineCa::key_pem`] and
    /// [`MachineCa::cert_pem`] wrote them).
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::from)?;
        let cert_der = crate::pem_to_der(cert_pem)?;
        let ours = Fingerprint::of_spki(&key.subject_public_key_info());
        if Fingerprint::of_certificate(&cert_der)? != ours {
            return Err(PkiError::BadCertificate(
                "the CA certificate is not for this key".into(),
            ));
        }
        Ok(MachineCa {
            key,
            cert_pem: cert_pem.to_string(),
            cert_der,
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The fingerprint tickets and contexts name this CA by.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_spki(&self.key.subject_public_key_info())
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), &self.key)
            .map_err(PkiError::from)
    }

    /// A client certificate for a public key the client made (DER SubjectPublicKeyInfo), with
    /// `role`, naming `who` (free text: a person or a laptop).
    pub fn issue_client(
        &self,
        spki_der: &[u8],
        who: &str,
        role: Role,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let public = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| PkiError::BadKey(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, who);
        dn.push(DnType::OrganizationName, role.as_str());
        let params = leaf(
            CertificateParams::default(),
            dn,
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
            validity,
        );
        let cert = params.signed_by(&public, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: None,
        })
    }

    /// A new key and server certificate for this machine's apid, naming `names` (host names
    /// and IP addresses it is reached by).
    pub fn issue_server(&self, names: &[String], now: OffsetDateTime) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::from)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_else(|| "uncloud".into()),
        );
        let params = leaf(
            CertificateParams::new(names.to_vec())?,
            dn,
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
            SERVER_VALIDITY,
        );
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
        })
    }

    /// Signs `message` (ECDSA P-256, SHA-256, ASN.1 DER signature), for tickets.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        let pkcs8 = self.key.serialize_der();
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &pkcs8,
            &rng,
        )
        .map_err(|e| PkiError::BadKey(e.to_string()))?;
        pair.sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| PkiError::BadKey("signing failed".into()))
    }

    /// Checks a signature made by [`MachineCa::sign`] with this CA's key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        verify_with_certificate(&self.cert_der, message, signature)
    }
}

/// Checks an ECDSA P-256 signature against the public key of a DER certificate.
pub fn verify_with_certificate(cert_der: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    let point = cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .as_ref();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(message, signature)
        .is_ok()
}

/// A leaf certificate's parameters: not a CA, signing only, one extended usage, a random
/// serial, back-dated for clock skew.
fn leaf(
    mut params: CertificateParams,
    dn: DistinguishedName,
    usage: ExtendedKeyUsagePurpose,
    now: OffsetDateTime,
    validity: Duration,
) -> CertificateParams {
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params.use_authority_key_identifier_extension = true;
    params
}

/// A random positive 16-byte serial: serials name certificates in the revocation list.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}
