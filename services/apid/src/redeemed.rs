//! Which join tickets this machine has seen redeemed, and by which machine: a ticket is
//! single-use because only its issuer redeems it and the issuer remembers it here.
//!
//! `<data_dir>/redeemed` holds one `ticket-id machine-id` line per ticket, rewritten
//! atomically and fsynced before the machine is admitted, so a crash never lets a ticket be
//! used twice. The same machine may redeem its ticket again (it lost the reply).

use std::path::PathBuf;
use std::sync::Mutex;

use uncloud_common::durable;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("the ticket was redeemed by another machine")]
    Used,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Redeemed {
    path: PathBuf,
    lock: Mutex<()>,
}

impl Redeemed {
    pub fn new(path: PathBuf) -> Redeemed {
        Redeemed {
            path,
            lock: Mutex::new(()),
        }
    }

    /// Records `ticket` as redeemed by `machine`; `Used` if another machine redeemed it.
    pub fn claim(&self, ticket: &str, machine: &str) -> Result<(), ClaimError> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ClaimError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        for line in text.lines() {
            if let Some((id, by)) = line.split_once(' ') {
                if id == ticket {
                    return if by == machine {
                        Ok(())
                    } else {
                        Err(ClaimError::Used)
                    };
                }
            }
        }
        let updated = format!("{text}{ticket} {machine}\n");
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ClaimError::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
        durable::write_atomically(&self.path, updated.as_bytes(), 0o600).map_err(|source| {
            ClaimError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_redeemed_once_and_only_its_redeemer_may_repeat_it_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apid/redeemed");
        let r = Redeemed::new(path.clone());
        r.claim("t1", "m1").unwrap();
        r.claim("t1", "m1").unwrap();
        assert!(matches!(r.claim("t1", "m2"), Err(ClaimError::Used)));
        r.claim("t2", "m2").unwrap();
        // What was recorded is on disk: a new instance (a restarted apid) still refuses.
        let again = Redeemed::new(path);
        assert!(matches!(again.claim("t2", "m1"), Err(ClaimError::Used)));
        again.claim("t1", "m1").unwrap();
    }
}
