//! Join tickets: what a new machine needs to reach the member that issued the ticket, verify
//! it, and be admitted by it.
//!
//! A ticket is `uncloud-ticket-1.<claims>.<signature>`: the claims as JSON and the member CA's
//! ECDSA signature over those JSON bytes, both base64url without padding. It is a bearer
//! secret until it is redeemed; the issuer records each redeemed id, so it is single-use
//! without any agreement between machines (it can only be redeemed at its issuer). Unknown
//! claim fields are ignored, so a newer issuer can add fields older machines still read.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::ca::{verify_with_certificate, MachineCa};
use crate::fingerprint::Fingerprint;
use crate::PkiError;

/// The text every ticket starts with (and its format version).
pub const PREFIX: &str = "uncloud-ticket-1.";
/// Longest ticket accepted (firstboot accepts files up to 16 KiB).
pub const MAX_LEN: usize = 8 * 1024;

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Random id; the issuer refuses it once redeemed.
    pub id: String,
    pub network_id: String,
    /// Machine id of the member that issued it (and alone redeems it).
    pub issuer: String,
    /// SPKI fingerprint of the issuer's CA: the new machine accepts the issuer's TLS server
    /// only with a certificate from that CA.
    pub issuer_ca: String,
    /// `host:port` where the issuer's apid listens (its public addresses), tried in turn.
    pub endpoints: Vec<String>,
    /// Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
    /// A name for the new machine; empty: it asks for its host name.
    #[serde(default)]
    pub name: String,
}

impl Claims {
    pub fn issuer_ca(&self) -> Result<Fingerprint, PkiError> {
        self.issuer_ca.parse()
    }

    /// Seconds left at `now` (unix seconds), or why it cannot be used.
    pub fn check_time(&self, now: u64) -> Result<(), PkiError> {
        if now >= self.expires_at {
            return Err(PkiError::TicketExpired {
                expired_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }
}

/// A random ticket id.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes and signs `claims` with the issuer's CA key.
pub fn issue(claims: &Claims, ca: &MachineCa) -> Result<String, PkiError> {
    let json = serde_json::to_vec(claims).expect("claims serialize");
    let signature = ca.sign(&json)?;
    Ok(format!(
        "{PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(&json),
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// Reads a ticket's claims WITHOUT checking the signature: what a new machine does to know
/// where to go (it then checks the issuer by its CA fingerprint over TLS).
pub fn read(ticket: &str) -> Result<(Claims, Vec<u8>, Vec<u8>), PkiError> {
    let ticket = ticket.trim();
    if ticket.len() > MAX_LEN {
        return Err(PkiError::BadTicket(format!(
            "{} bytes, more than the {MAX_LEN} accepted",
            ticket.len()
        )));
    }
    let body = ticket.strip_prefix(PREFIX).ok_or_else(|| {
        PkiError::BadTicket(format!(
            "it does not start with {PREFIX:?} (is it a ticket?)"
        ))
    })?;
    let (claims_b64, sig_b64) = body
        .split_once('.')
        .ok_or_else(|| PkiError::BadTicket("it has no signature part".into()))?;
    let json = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .map_err(|_| PkiError::BadTicket("its claims are not base64url".into()))?;
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| PkiError::BadTicket("its signature is not base64url".into()))?;
    let claims: Claims = serde_json::from_slice(&json)
        .map_err(|e| PkiError::BadTicket(format!("its claims are not readable: {e}")))?;
    Ok((claims, json, signature))
}

/// Checks a ticket at its issuer: signed by this CA (so not tampered with), for this
/// network, not expired at `now` (unix seconds). Whether it was already redeemed is the
/// caller's record.
pub fn verify(
    ticket: &str,
    ca: &MachineCa,
    network_id: &str,
    machine_id: &str,
    now: u64,
) -> Result<Claims, PkiError> {
    let (claims, json, signature) = read(ticket)?;
    if !verify_with_certificate(ca.cert_der(), &json, &signature) {
        return Err(PkiError::BadTicket(
            "its signature does not match: it was not issued here or was changed".into(),
        ));
    }
    if claims.network_id != network_id {
        return Err(PkiError::BadTicket(format!(
            "it is for network {:?}, not this one",
            claims.network_id
        )));
    }
    if claims.issuer != machine_id {
        return Err(PkiError::BadTicket(format!(
            "it was issued by machine {:?}; only that machine can redeem it",
            claims.issuer
        )));
    }
    claims.check_time(now)?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(ca: &MachineCa) -> Claims {
        Claims {
            id: new_id(),
            network_id: "net".into(),
            issuer: "m1".into(),
            issuer_ca: ca.fingerprint().to_string(),
            endpoints: vec!["192.0.2.1:7443".into()],
            issued_at: 1_000,
            expires_at: 2_000,
            name: String::new(),
        }
    }

    fn ca() -> MachineCa {
        MachineCa::generate("net", "m1", time::OffsetDateTime::now_utc()).unwrap()
    }

    #[test]
    fn an_issued_ticket_verifies_at_its_issuer_only_and_only_in_time() {
        let ca = ca();
        let c = claims(&ca);
        let t = issue(&c, &ca).unwrap();
        assert!(t.starts_with(PREFIX) && t.is_ascii() && !t.contains(char::is_whitespace));
        assert_eq!(verify(&t, &ca, "net", "m1", 1_500).unwrap(), c);
        assert_eq!(read(&t).unwrap().0.issuer_ca().unwrap(), ca.fingerprint());
        let err = verify(&t, &ca, "net", "m1", 2_000).unwrap_err();
        assert!(matches!(err, PkiError::TicketExpired { .. }), "{err}");
        let err = verify(&t, &ca, "other", "m1", 1_500)
            .unwrap_err()
            .to_string();
        assert!(err.contains("network"), "{err}");
        let err = verify(&t, &ca, "net", "m2", 1_500).unwrap_err().to_string();
        assert!(err.contains("only that machine"), "{err}");
        // Another machine's CA did not sign it.
        let err = verify(&t, &self::ca(), "net", "m1", 1_500)
            .unwrap_err()
            .to_string();
        assert!(err.contains("signature"), "{err}");
    }

    #[test]
    fn a_tampered_ticket_is_refused() {
        let ca = ca();
        let t = issue(&claims(&ca), &ca).unwrap();
        let (mut c, _, sig) = read(&t).unwrap();
        c.expires_at = u64::MAX;
        let forged = format!(
            "{PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap()),
            URL_SAFE_NO_PAD.encode(sig)
        );
        assert!(verify(&forged, &ca, "net", "m1", 1_500).is_err());
        for bad in [
            "",
            "hello",
            PREFIX,
            &format!("{PREFIX}abc"),
            &format!("{PREFIX}!!.??"),
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
        assert!(read(&"x".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn claims_from_a_newer_issuer_with_more_fields_still_read() {
        let ca = ca();
        let mut v = serde_json::to_value(claims(&ca)).unwrap();
        v["added_later"] = serde_json::json!({"x": 1});
        let json = serde_json::to_vec(&v).unwrap();
        let t = format!(
            "{PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(ca.sign(&json).unwrap())
        );
        assert_eq!(verify(&t, &ca, "net", "m1", 1_500).unwrap().issuer, "m1");
    }

    proptest::proptest! {
        /// Hostile ticket text never panics.
        #[test]
        fn garbage_never_panics(s in ".{0,600}") {
            let _ = read(&s);
            let _ = read(&format!("{PREFIX}{s}"));
        }
    }
}
