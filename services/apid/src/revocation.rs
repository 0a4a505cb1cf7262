//! Which certificates `uc cert revoke X` means: pure, so the matching rules are tested
//! without a daemon.

use std::collections::BTreeMap;

use uncloud_common::model::ClientCert;

/// A serial prefix shorter than this could match by accident.
const MIN_PREFIX: usize = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("no client certificate with serial or subject {0:?} (see `uc cert ls`)")]
    None(String),
    #[error("serial prefix {0:?} matches several certificates: give more digits")]
    Ambiguous(String),
}

/// The certificates still valid that `what` names: the one with that serial (or unique
/// serial prefix of at least 8 digits), else all with that subject. A full serial the state
/// has no record of (a certificate issued before records were kept) gets a new record, so
/// it can be revoked too.
pub fn targets(
    clients: &BTreeMap<String, ClientCert>,
    what: &str,
) -> Result<Vec<ClientCert>, TargetError> {
    let what = what.trim();
    let serial = what.to_ascii_lowercase().replace(':', "");
    let is_hex = !serial.is_empty() && serial.chars().all(|c| c.is_ascii_hexdigit());
    if is_hex && serial.len() >= MIN_PREFIX {
        let by_serial: Vec<&ClientCert> = clients
            .values()
            .filter(|c| c.serial.starts_with(&serial))
            .collect();
        match by_serial.as_slice() {
            [one] => return Ok(vec![(*one).clone()]).map(keep_valid),
            [] if serial.len() >= 32 => {
                return Ok(vec![ClientCert {
                    serial,
                    ..Default::default()
                }])
            }
            [] => {}
            _ => return Err(TargetError::Ambiguous(what.to_string())),
        }
    }
    let by_subject: Vec<ClientCert> = clients
        .values()
        .filter(|c| c.subject == what)
        .cloned()
        .collect();
    if by_subject.is_empty() {
        return Err(TargetError::None(what.to_string()));
    }
    Ok(keep_valid(by_subject))
}

/// Those not revoked yet (revoking again changes nothing).
fn keep_valid(v: Vec<ClientCert>) -> Vec<ClientCert> {
    v.into_iter().filter(|c| c.revoked_at_ms == 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str, subject: &str, revoked_at_ms: u64) -> (String, ClientCert) {
        (
            serial.to_string(),
            ClientCert {
                serial: serial.into(),
                subject: subject.into(),
                role: "admin".into(),
                revoked_at_ms,
                ..Default::default()
            },
        )
    }

    fn clients() -> BTreeMap<String, ClientCert> {
        BTreeMap::from([
            cert("0a1b2c3d4e5f6071", "alice@laptop", 0),
            cert("0a1b2c3d99999999", "alice@phone", 0),
            cert("77777777aaaaaaaa", "bob", 0),
            cert("88888888bbbbbbbb", "bob", 5),
        ])
    }

    fn serials(v: Vec<ClientCert>) -> Vec<String> {
        v.into_iter().map(|c| c.serial).collect()
    }

    #[test]
    fn by_serial_prefix_or_subject() {
        let c = clients();
        assert_eq!(
            serials(targets(&c, "0a1b2c3d4e").unwrap()),
            ["0a1b2c3d4e5f6071"]
        );
        assert_eq!(
            serials(targets(&c, "0A:1B:2C:3D:4E").unwrap()),
            ["0a1b2c3d4e5f6071"]
        );
        // Both of bob's, but the one revoked already is left alone.
        assert_eq!(serials(targets(&c, "bob").unwrap()), ["77777777aaaaaaaa"]);
    }

    #[test]
    fn ambiguous_short_and_unknown_names_are_refused() {
        let c = clients();
        assert_eq!(
            targets(&c, "0a1b2c3d"),
            Err(TargetError::Ambiguous("0a1b2c3d".into()))
        );
        // Too short to be a serial prefix, and no one's subject.
        assert_eq!(targets(&c, "0a1b"), Err(TargetError::None("0a1b".into())));
        assert_eq!(
            targets(&c, "mallory"),
            Err(TargetError::None("mallory".into()))
        );
    }

    #[test]
    fn a_full_serial_without_a_record_is_still_revocable() {
        let full = "00112233445566778899aabbccddeeff";
        let t = targets(&clients(), full).unwrap();
        assert_eq!(serials(t), [full]);
    }
}
