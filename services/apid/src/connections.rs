//! Who is connected to the API right now, for `org.uncloud.Api1.Connections`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::caller::Caller;

/// One open connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    pub caller: Caller,
    pub since: Instant,
}

/// The open connections; each is listed while its [`Registered`] guard lives.
#[derive(Default, Clone)]
pub struct Connections {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    open: BTreeMap<u64, Connection>,
}

/// Removes its connection from the list when dropped (the connection ended).
pub struct Registered {
    id: u64,
    inner: Arc<Mutex<Inner>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        // A poisoned lock only means another connection's bookkeeping panicked: keep going.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.open.remove(&self.id);
    }
}

impl Connections {
    pub fn register(&self, peer: SocketAddr, caller: Caller) -> Registered {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.next += 1;
        let id = inner.next;
        inner.open.insert(
            id,
            Connection {
                peer,
                caller,
                since: Instant::now(),
            },
        );
        Registered {
            id,
            inner: self.inner.clone(),
        }
    }

    /// The open connections, oldest first.
    pub fn list(&self) -> Vec<Connection> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.open.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_listed_while_its_guard_lives() {
        let c = Connections::default();
        let a = c.register("192.0.2.1:5000".parse().unwrap(), Caller::Anonymous);
        let b = c.register("192.0.2.2:5000".parse().unwrap(), Caller::Maintenance);
        assert_eq!(c.list().len(), 2);
        drop(a);
        let left = c.list();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].caller, Caller::Maintenance);
        drop(b);
        assert!(c.list().is_empty());
    }
}
