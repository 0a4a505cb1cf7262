//! Who is on the other end of a connection, as the TLS handshake and the state decided.

use uncloud_pki::Role;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A connection to a machine in maintenance mode (no client certificates exist yet).
    Maintenance,
    /// A member-mode connection without a client certificate.
    Anonymous,
    /// A client certificate this network does not accept (the reason says why).
    Refused(String),
    /// A verified client certificate.
    Client {
        subject: String,
        role: Role,
        serial: String,
    },
}

impl Caller {
    /// A client with the reader role: it sees services but not the digests of their secrets.
    pub fn is_reader(&self) -> bool {
        matches!(self, Caller::Client { role, .. } if *role == Role::Reader)
    }
}
