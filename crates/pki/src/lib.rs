//! `uncloud-pki`: the certificates and join tickets of an Uncloud network.
//!
//! # Background
//! `uc` reaches a machine's apid over mutual TLS on a public port, and a new machine redeems a
//! join ticket at the member that issued it. Both need a notion of "signed by this network"
//! that survives removing a machine: nothing a removed machine holds or could sign may be
//! accepted afterwards.
//!
//! # Design (decision 0009)
//! - No network-wide key. Every member makes its own CA ([`MachineCa`]) when it creates or
//!   joins the network; the key never leaves it. The state records each machine's CA
//!   certificate; the set of trusted CAs is the CAs of the machines in the state, so removing a
//!   machine removes its CA from every machine's trust as the removal spreads.
//! - Client certificates carry their role ([`Role`]) in the subject's Organization and only
//!   the client-auth usage; [`inspect::check_client`] decides on one (issuer, validity, usage,
//!   revocation list, role).
//! - A user checks a fresh machine, and a new machine checks a ticket's issuer, by the SHA-256
//!   of a public key ([`Fingerprint`]).
//! - [`ticket`]: signed, short-lived join tickets redeemed only at their issuer.
//!
//! # Limitations
//! - Certificates issued by a machine stop working when that machine is removed; `uc`
//!   re-issues its own through another member first.
//! - Revocation is by serial in the replicated state: a machine that was offline when a
//!   certificate was revoked accepts it until it syncs.

pub mod ca;
pub mod fingerprint;
pub mod inspect;
pub mod ticket;

pub use ca::{Issued, MachineCa};
pub use fingerprint::Fingerprint;
pub use inspect::{check_client, issued_by, CertInfo, Refusal};

/// What a client certificate allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read-only calls.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a certificate, key, fingerprint or ticket could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("not a usable certificate: {0}")]
    BadCertificate(String),
    #[error("not a usable key: {0}")]
    BadKey(String),
    #[error("{0:?} is not a SHA-256 fingerprint (64 hex digits, optionally `sha256:` first)")]
    BadFingerprint(String),
    #[error("not a valid join ticket: {0}")]
    BadTicket(String),
    #[error("the join ticket expired at {expired_at} (unix time; it is now {now}): ask for a new one with `uc machine token`")]
    TicketExpired { expired_at: u64, now: u64 },
}

/// The DER of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use base64::Engine;
    let (begin, end) = ("-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----");
    let bad = |why: &str| PkiError::BadCertificate(format!("not a PEM certificate: {why}"));
    let start = pem.find(begin).ok_or_else(|| bad("no BEGIN CERTIFICATE"))? + begin.len();
    let len = pem[start..]
        .find(end)
        .ok_or_else(|| bad("no END CERTIFICATE"))?;
    let b64: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad("not base64"))
}

/// PEM text of a DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
