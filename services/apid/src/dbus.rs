//! `org.uncloud.Api1` at `/org/uncloud/Api1`: the API as this machine runs it.
//!
//! ```text
//! busctl get-property org.uncloud.Api1 /org/uncloud/Api1 org.uncloud.Api1 Mode
//! busctl call org.uncloud.Api1 /org/uncloud/Api1 org.uncloud.Api1 Connections
//! ```

use std::sync::Arc;

use uncloud_common::dbus::{API_NAME, API_PATH};
use zbus::{interface, Connection};

use crate::api::{Apid, Caller};

use uncloud_common::dbus::ApiConnectionRow as ConnectionRow;

pub struct Api1 {
    apid: Arc<Apid>,
}

#[interface(name = "org.uncloud.Api1")]
impl Api1 {
    /// `maintenance` (fresh: only `uc machine init|add`) or `member`.
    #[zbus(property(emits_changed_signal = "false"))]
    fn mode(&self) -> String {
        if self.apid.member().is_some() {
            "member".into()
        } else {
            "maintenance".into()
        }
    }

    /// The network's id; empty while fresh.
    #[zbus(property(emits_changed_signal = "false"))]
    fn network_id(&self) -> String {
        self.apid
            .member()
            .map(|m| m.network_id.clone())
            .unwrap_or_default()
    }

    /// The address the API listens on (TLS).
    #[zbus(property(emits_changed_signal = "const"))]
    fn listen(&self) -> String {
        self.apid.listen().to_string()
    }

    /// Who is connected now.
    fn connections(&self) -> Vec<ConnectionRow> {
        self.apid
            .connections()
            .list()
            .into_iter()
            .map(|c| {
                let (how, subject, role) = match c.caller {
                    Caller::Maintenance => ("maintenance", String::new(), String::new()),
                    Caller::Anonymous => ("anonymous", String::new(), String::new()),
                    Caller::Refused(why) => ("refused", why, String::new()),
                    Caller::Client { subject, role, .. } => {
                        ("client", subject, role.as_str().to_string())
                    }
                };
                (
                    c.peer.to_string(),
                    how.to_string(),
                    subject,
                    role,
                    c.since.elapsed().as_secs(),
                )
            })
            .collect()
    }
}

/// Serves the interface on `conn` and takes the well-known name.
pub async fn serve(conn: &Connection, apid: Arc<Apid>) -> zbus::Result<()> {
    conn.object_server().at(API_PATH, Api1 { apid }).await?;
    conn.request_name(API_NAME).await?;
    Ok(())
}
