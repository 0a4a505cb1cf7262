//! Ordering a certificate from an ACME directory (rustls-acme's account and order calls) and
//! keeping the result in the state.
//!
//! rustls-acme's high-level `AcmeState` reads its cache once and renews on its own timer, so
//! several machines running it would each order; its low-level calls are used instead, driven
//! by [`crate::ordering`]'s decisions, with the state as the only store: the claim first
//! (with the account key, so every ingress machine answers the challenge), then the order over
//! HTTP-01, then the bundle, or the failure with its back-off. One order at a time per machine.

use std::sync::Arc;
use std::time::Duration;

use base64::prelude::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls_acme::acme::{Account, AuthStatus, Directory, OrderStatus};
use uncloud_common::dbus::StateProxy;
use uncloud_common::model::Certificate;

use crate::bundle;
use crate::config::Config;
use crate::ordering::backoff;

/// How long the CA may take to validate a challenge or issue, before the order is given up.
const VALIDATION_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("ACME: {0}")]
    Acme(#[from] rustls_acme::acme::AcmeError),
    #[error("the CA refused the challenge: {0}")]
    Invalid(String),
    #[error("the CA took longer than {} s", VALIDATION_DEADLINE.as_secs())]
    Deadline,
    #[error("making the key and request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("the issued certificate is not usable: {0}")]
    Bundle(#[from] bundle::BundleError),
    #[error("writing to the state: {0}")]
    State(zbus::Error),
}

/// The TLS settings for talking to the ACME directory: the roots of `path` (PEM).
pub fn client_config(path: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for c in certs.flatten() {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether `b64` is a usable account key.
fn usable_account_key(b64: &str) -> bool {
    crate::certs::thumbprint(b64).is_some()
}

/// Orders `hostname`'s certificate and records the outcome in the state. `entries` is the
/// state's certificate entries as this machine sees them now.
pub async fn order(
    config: &Config,
    client: &Arc<rustls::ClientConfig>,
    state: &StateProxy<'_>,
    me: &str,
    hostname: &str,
    entries: &std::collections::BTreeMap<String, Certificate>,
) -> Result<(), OrderError> {
    let directory = config.directory().to_string();
    let mut entry = entries
        .get(hostname)
        .cloned()
        .unwrap_or_else(|| Certificate {
            hostname: hostname.to_string(),
            ..Default::default()
        });
    // One account per network and directory: reuse one another hostname has.
    if !usable_account_key(&entry.account_key) {
        entry.account_key = entries
            .values()
            .filter(|e| e.directory == directory && usable_account_key(&e.account_key))
            .map(|e| e.account_key.clone())
            .next()
            .unwrap_or_else(|| BASE64_STANDARD.encode(Account::generate_key_pair()));
    }
    entry.directory = directory.clone();
    entry.claim_by = me.to_string();
    entry.claim_until_ms = now_ms() + config.order_claim_secs * 1000;
    write(state, &entry).await?;
    tracing::info!(%hostname, %directory, "ordering a certificate");

    let outcome = async {
        tokio::time::sleep(Duration::from_secs(config.challenge_delay_secs)).await;
        let key = BASE64_STANDARD
            .decode(&entry.account_key)
            .expect("checked above");
        let dir = Directory::discover(client, &directory).await?;
        let contact: Vec<String> = if config.acme_email.is_empty() {
            Vec::new()
        } else {
            vec![format!("mailto:{}", config.acme_email)]
        };
        let account = Account::create_with_keypair(client, dir, &contact, &key).await?;
        issue(client, &account, hostname).await
    }
    .await;

    entry.claim_by.clear();
    entry.claim_until_ms = 0;
    let result = match outcome {
        Ok(bundle) => {
            entry.bundle = bundle;
            entry.issued_by = me.to_string();
            entry.issued_at_ms = now_ms();
            entry.failures = 0;
            entry.last_error.clear();
            entry.retry_after_ms = 0;
            tracing::info!(%hostname, "certificate issued; every ingress machine serves it");
            Ok(())
        }
        Err(e) => {
            entry.failures = entry.failures.saturating_add(1);
            let wait = backoff(
                entry.failures,
                Duration::from_secs(config.retry_min_secs),
                Duration::from_secs(config.retry_max_secs),
            );
            entry.retry_after_ms = now_ms() + wait.as_millis() as u64;
            entry.last_error = e.to_string().chars().take(1000).collect();
            tracing::warn!(%hostname, error = %e, failures = entry.failures,
                retry_in_secs = wait.as_secs(), "ordering a certificate failed");
            Err(e)
        }
    };
    write(state, &entry).await?;
    result
}

async fn write(state: &StateProxy<'_>, entry: &Certificate) -> Result<(), OrderError> {
    let json = serde_json::to_string(entry).expect("the model serializes");
    state
        .upsert_certificate(&json)
        .await
        .map_err(OrderError::State)
}

/// Drives one order to its certificate; returns the bundle.
async fn issue(
    client: &Arc<rustls::ClientConfig>,
    account: &Account,
    hostname: &str,
) -> Result<String, OrderError> {
    let (url, mut order) = account
        .new_order(client, vec![hostname.to_string()])
        .await?;
    for auth_url in &order.authorizations {
        let auth = account.auth(client, auth_url).await?;
        match auth.status {
            AuthStatus::Valid => continue,
            AuthStatus::Pending => {}
            other => return Err(OrderError::Invalid(format!("authorization is {other:?}"))),
        }
        let (challenge, _) = account.http_01(&auth.challenges)?;
        account.challenge(client, &challenge.url).await?;
        let deadline = tokio::time::Instant::now() + VALIDATION_DEADLINE;
        loop {
            tokio::time::sleep(POLL).await;
            let auth = account.auth(client, auth_url).await?;
            match auth.status {
                AuthStatus::Valid => break,
                AuthStatus::Pending => {}
                _ => {
                    let detail = auth
                        .challenges
                        .iter()
                        .filter_map(|c| c.error.as_ref())
                        .filter_map(|p| p.detail.clone())
                        .next()
                        .unwrap_or_else(|| format!("{:?}", auth.status));
                    return Err(OrderError::Invalid(detail));
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(OrderError::Deadline);
            }
        }
    }
    let (csr, key_pem) = bundle::request(hostname)?;
    let deadline = tokio::time::Instant::now() + VALIDATION_DEADLINE;
    loop {
        match &order.status {
            OrderStatus::Ready => {
                order = account.finalize(client, &order.finalize, &csr).await?;
                continue;
            }
            OrderStatus::Valid { certificate } => {
                let chain = account.certificate(client, certificate).await?;
                let bundle = bundle::compose(&chain, &key_pem);
                bundle::read(&bundle)?;
                return Ok(bundle);
            }
            OrderStatus::Invalid => {
                let why = order
                    .error
                    .as_ref()
                    .and_then(|p| p.detail.clone())
                    .unwrap_or_else(|| "the order became invalid".into());
                return Err(OrderError::Invalid(why));
            }
            OrderStatus::Pending | OrderStatus::Processing => {
                tokio::time::sleep(POLL).await;
                order = account.order(client, &url).await?;
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(OrderError::Deadline);
        }
    }
}
