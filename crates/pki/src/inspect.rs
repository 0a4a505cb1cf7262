//! What a peer's certificate says, checked the way apid decides on a client: issued by a CA
//! the network trusts, in its validity period, for client authentication, not revoked; and
//! the role it carries.

use std::collections::BTreeSet;

use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::X509Certificate;

use crate::fingerprint::Fingerprint;
use crate::{PkiError, Role};

/// The facts of one certificate that access decisions use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial as lower-case hex: the key of the revocation list.
    pub serial: String,
    /// Common name (a person, a laptop, a machine).
    pub subject: String,
    /// Role from the Organization, when it names one.
    pub role: Option<Role>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub client_auth: bool,
    pub server_auth: bool,
    pub is_ca: bool,
    /// SPKI fingerprint of the certificate's own key.
    pub key: Fingerprint,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<CertInfo, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        Ok(info(&cert))
    }
}

fn info(cert: &X509Certificate<'_>) -> CertInfo {
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let cn = first(&mut subject.iter_common_name());
    let org = first(&mut subject.iter_organization());
    let (mut client_auth, mut server_auth, mut is_ca) = (false, false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) => {
                client_auth = eku.client_auth;
                server_auth = eku.server_auth;
            }
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            _ => {}
        }
    }
    CertInfo {
        serial: cert
            .tbs_certificate
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        subject: cn,
        role: Role::parse(&org),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        client_auth,
        server_auth,
        is_ca,
        key: Fingerprint::of_spki(cert.tbs_certificate.subject_pki.raw),
    }
}

/// Why a client certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the certificate was not issued by a machine of this network")]
    UnknownIssuer,
    #[error("the certificate is not valid before {0}")]
    NotYetValid(OffsetDateTime),
    #[error("the certificate expired at {0}")]
    Expired(OffsetDateTime),
    #[error("the certificate is not for client authentication")]
    NotForClients,
    #[error("the certificate names no role (admin or reader)")]
    NoRole,
    #[error("the certificate {0} was revoked")]
    Revoked(String),
}

/// Whether `cert_der` was signed by the CA `ca_der` (names and signature; not validity).
pub fn issued_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(cert_der),
        x509_parser::parse_x509_certificate(ca_der),
    ) else {
        return false;
    };
    ca.subject() == cert.issuer() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// Decides on a client certificate (DER): it must be signed by one of `trusted` (DER CA
/// certificates of the network's machines), valid at `now`, for client auth, not revoked, and
/// carry a role. Returns what it is.
pub fn check_client(
    der: &[u8],
    trusted: &[Vec<u8>],
    revoked: &BTreeSet<String>,
    now: OffsetDateTime,
) -> Result<CertInfo, Refusal> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| Refusal::Unreadable(e.to_string()))?;
    let signed_by_trusted = trusted.iter().any(|ca_der| issued_by(der, ca_der));
    if !signed_by_trusted {
        return Err(Refusal::UnknownIssuer);
    }
    let i = info(&cert);
    if now < i.not_before {
        return Err(Refusal::NotYetValid(i.not_before));
    }
    if now > i.not_after {
        return Err(Refusal::Expired(i.not_after));
    }
    if !i.client_auth || i.is_ca {
        return Err(Refusal::NotForClients);
    }
    if revoked.contains(&i.serial) {
        return Err(Refusal::Revoked(i.serial));
    }
    if i.role.is_none() {
        return Err(Refusal::NoRole);
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{MachineCa, CLIENT_VALIDITY};
    use rcgen::{KeyPair, PublicKeyData};
    use time::Duration;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn client(ca: &MachineCa, role: Role) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let issued = ca
            .issue_client(
                &key.subject_public_key_info(),
                "alice's laptop",
                role,
                now(),
                CLIENT_VALIDITY,
            )
            .unwrap();
        assert!(
            issued.key_pem.is_none(),
            "the client's key never leaves the client"
        );
        (crate::pem_to_der(&issued.cert_pem).unwrap(), key)
    }

    #[test]
    fn a_client_certificate_is_accepted_only_as_the_network_issued_it() {
        let ca = MachineCa::generate("net", "m1", now()).unwrap();
        let trusted = vec![ca.cert_der().to_vec()];
        let none = BTreeSet::new();
        let (admin, key) = client(&ca, Role::Admin);
        let info = check_client(&admin, &trusted, &none, now()).unwrap();
        assert_eq!(
            (info.role, info.subject.as_str()),
            (Some(Role::Admin), "alice's laptop")
        );
        assert_eq!(
            info.key,
            Fingerprint::of_spki(&key.subject_public_key_info())
        );
        let (reader, _) = client(&ca, Role::Reader);
        assert_eq!(
            check_client(&reader, &trusted, &none, now()).unwrap().role,
            Some(Role::Reader)
        );

        // Another CA, even one with the same name (a removed machine's, or a forger's).
        let twin = MachineCa::generate("net", "m1", now()).unwrap();
        let (foreign, _) = client(&twin, Role::Admin);
        assert_eq!(
            check_client(&foreign, &trusted, &none, now()),
            Err(Refusal::UnknownIssuer)
        );
        assert_eq!(
            check_client(&admin, &[], &none, now()),
            Err(Refusal::UnknownIssuer)
        );
        // Out of its validity.
        let later = now() + CLIENT_VALIDITY + Duration::days(1);
        assert!(matches!(
            check_client(&admin, &trusted, &none, later),
            Err(Refusal::Expired(_))
        ));
        let earlier = now() - Duration::days(30);
        assert!(matches!(
            check_client(&admin, &trusted, &none, earlier),
            Err(Refusal::NotYetValid(_))
        ));
        // Revoked by serial.
        let revoked = BTreeSet::from([info.serial.clone()]);
        assert_eq!(
            check_client(&admin, &trusted, &revoked, now()),
            Err(Refusal::Revoked(info.serial))
        );
        // A server certificate or the CA itself is not a client.
        let server = ca
            .issue_server(&["vps-1".into(), "192.0.2.1".into()], now())
            .unwrap();
        let server = crate::pem_to_der(&server.cert_pem).unwrap();
        assert_eq!(
            check_client(&server, &trusted, &none, now()),
            Err(Refusal::NotForClients)
        );
        assert!(CertInfo::parse(&server).unwrap().server_auth);
        assert_eq!(
            check_client(ca.cert_der(), &trusted, &none, now()),
            Err(Refusal::NotForClients)
        );
        assert!(matches!(
            check_client(b"garbage", &trusted, &none, now()),
            Err(Refusal::Unreadable(_))
        ));
    }

    #[test]
    fn a_ca_survives_a_round_trip_through_pem_and_still_signs_for_the_same_trust() {
        let ca = MachineCa::generate("net", "m1", now()).unwrap();
        let again = MachineCa::from_pem(&ca.key_pem(), ca.cert_pem()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(
            Fingerprint::of_certificate(ca.cert_der()).unwrap(),
            ca.fingerprint()
        );
        let (cert, _) = client(&again, Role::Admin);
        assert!(check_client(&cert, &[ca.cert_der().to_vec()], &BTreeSet::new(), now()).is_ok());
        assert!(CertInfo::parse(ca.cert_der()).unwrap().is_ca);
        let other = MachineCa::generate("net", "m2", now()).unwrap();
        assert!(MachineCa::from_pem(&other.key_pem(), ca.cert_pem()).is_err());
        assert_eq!(
            crate::pem_to_der(&crate::der_to_pem(ca.cert_der())).unwrap(),
            ca.cert_der()
        );
    }
}
