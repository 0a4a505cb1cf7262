//! The certificates this machine serves, by hostname (SNI), and the HTTP-01 answers it gives.
//!
//! Both come from the state's certificate entries, so every ingress machine serves the same
//! certificate and answers every challenge: the answer to token `t` is `t.<thumbprint of the
//! account key>` (RFC 8555 §8.3), which any machine holding the entry computes. Bundles are
//! parsed once per change of their text.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::prelude::*;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use uncloud_common::model::Certificate;

use crate::bundle::{self, Facts};

/// One hostname's served certificate and challenge key.
#[derive(Clone)]
pub struct Served {
    /// The bundle's text it was read from (to skip re-reading an unchanged one).
    source: String,
    pub key: Option<Arc<CertifiedKey>>,
    pub facts: Option<Facts>,
    /// Why the bundle is not served, when it is not.
    pub problem: Option<String>,
    /// The account key's JWK thumbprint, for HTTP-01 answers.
    pub thumbprint: Option<String>,
    account_source: String,
    /// Self-signed (the operator's fallback), not from the state.
    pub self_signed: bool,
}

/// The thumbprint (RFC 7638) of an ACME account key (PKCS#8 P-256, base64).
pub fn thumbprint(account_key_b64: &str) -> Option<String> {
    let pkcs8 = BASE64_STANDARD.decode(account_key_b64).ok()?;
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).ok()?;
    let point = key.public_key().as_ref();
    if point.len() != 65 {
        return None;
    }
    let (x, y) = point[1..].split_at(32);
    // Members in lexicographic order, no spaces (RFC 7638 §3).
    let jwk = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        BASE64_URL_SAFE_NO_PAD.encode(x),
        BASE64_URL_SAFE_NO_PAD.encode(y)
    );
    let hash = ring::digest::digest(&ring::digest::SHA256, jwk.as_bytes());
    Some(BASE64_URL_SAFE_NO_PAD.encode(hash))
}

/// Every hostname's certificate; the TLS acceptor resolves through it.
#[derive(Default)]
pub struct Store {
    by_host: RwLock<HashMap<String, Served>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("hosts", &self.by_host.read().unwrap().len())
            .finish()
    }
}

impl Store {
    /// Brings the store in step with the state's entries; `self_signed` hostnames (HTTPS
    /// routes without an issued certificate, when the operator asked for the fallback) get a
    /// certificate made here.
    pub fn update(
        &self,
        entries: &std::collections::BTreeMap<String, Certificate>,
        self_signed: &[String],
    ) {
        let old = self.by_host.read().unwrap().clone();
        let mut fresh: HashMap<String, Served> = HashMap::new();
        for (host, e) in entries {
            let prev = old.get(host).filter(|p| !p.self_signed);
            let mut served = match prev {
                Some(p) if p.source == e.bundle => p.clone(),
                _ => read_served(&e.bundle),
            };
            if served.account_source != e.account_key {
                served.thumbprint = thumbprint(&e.account_key);
                served.account_source = e.account_key.clone();
            }
            fresh.insert(host.clone(), served);
        }
        for host in self_signed {
            let has_key = fresh.get(host).is_some_and(|s| s.key.is_some());
            if has_key {
                continue;
            }
            let made = match old.get(host).filter(|p| p.self_signed) {
                Some(p) => p.clone(),
                None => match bundle::self_signed(host) {
                    Ok(b) => Served {
                        self_signed: true,
                        ..read_served(&b)
                    },
                    Err(e) => {
                        tracing::warn!(%host, error = %e, "cannot make a self-signed certificate");
                        continue;
                    }
                },
            };
            let entry = fresh.entry(host.clone()).or_insert_with(|| made.clone());
            entry.key = made.key;
            entry.facts = made.facts;
            entry.self_signed = true;
            entry.source = made.source;
        }
        *self.by_host.write().unwrap() = fresh;
    }

    /// The answer to an HTTP-01 challenge for `host`'s `token`, when this machine knows the
    /// account ordering it.
    pub fn key_authorization(&self, host: &str, token: &str) -> Option<String> {
        let valid = !token.is_empty()
            && token.len() <= 256
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return None;
        }
        let map = self.by_host.read().unwrap();
        let tp = map.get(host)?.thumbprint.as_ref()?;
        Some(format!("{token}.{tp}"))
    }

    pub fn get(&self, host: &str) -> Option<Served> {
        self.by_host.read().unwrap().get(host).cloned()
    }

    pub fn all(&self) -> Vec<(String, Served)> {
        let mut v: Vec<_> = self
            .by_host
            .read()
            .unwrap()
            .iter()
            .map(|(h, s)| (h.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

fn read_served(text: &str) -> Served {
    let (key, facts, problem) = if text.is_empty() {
        (None, None, None)
    } else {
        match bundle::read(text) {
            Ok((k, f)) => (Some(k), Some(f), None),
            Err(e) => (None, None, Some(e.to_string())),
        }
    };
    Served {
        source: text.to_string(),
        key,
        facts,
        problem,
        thumbprint: None,
        account_source: String::new(),
        self_signed: false,
    }
}

/// rustls asks the store for the certificate of the name the client asked for.
#[derive(Debug)]
pub struct Resolver(pub Arc<Store>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0.by_host.read().unwrap().get(&name)?.key.clone()
    }
}

/// The TLS settings of the HTTPS listener: certificates by SNI, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(store: Arc<Store>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(store)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_challenge_answer_is_the_one_rustls_acme_computes_for_the_same_account() {
        let pkcs8 = rustls_acme::acme::Account::generate_key_pair();
        let key_b64 = BASE64_STANDARD.encode(&pkcs8);
        let account = rustls_acme::acme::Account {
            key_pair: EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &pkcs8,
                &ring::rand::SystemRandom::new(),
            )
            .unwrap(),
            directory: serde_json::from_str(r#"{"newNonce":"n","newAccount":"a","newOrder":"o"}"#)
                .unwrap(),
            kid: "k".into(),
        };
        let challenge: rustls_acme::acme::Challenge =
            serde_json::from_str(r#"{"type":"http-01","url":"u","token":"tok-EN_1"}"#).unwrap();
        let (_, expected) = account.http_01(std::slice::from_ref(&challenge)).unwrap();

        let store = Store::default();
        let mut entries = BTreeMap::new();
        entries.insert(
            "app.example.com".to_string(),
            Certificate {
                hostname: "app.example.com".into(),
                account_key: key_b64,
                ..Default::default()
            },
        );
        store.update(&entries, &[]);
        assert_eq!(
            store.key_authorization("app.example.com", "tok-EN_1"),
            Some(expected)
        );
        assert_eq!(
            store.key_authorization("other.example.com", "tok-EN_1"),
            None
        );
        assert_eq!(store.key_authorization("app.example.com", "../etc"), None);
    }

    #[test]
    fn bundles_are_served_by_name_and_the_fallback_only_where_asked() {
        let store = Store::default();
        let mut entries = BTreeMap::new();
        entries.insert(
            "a.example.com".to_string(),
            Certificate {
                hostname: "a.example.com".into(),
                bundle: bundle::self_signed("a.example.com").unwrap(),
                ..Default::default()
            },
        );
        entries.insert(
            "bad.example.com".to_string(),
            Certificate {
                hostname: "bad.example.com".into(),
                bundle: "not a bundle".into(),
                ..Default::default()
            },
        );
        store.update(&entries, &["c.example.com".to_string()]);
        let a = store.get("a.example.com").unwrap();
        assert!(a.key.is_some() && !a.self_signed);
        let bad = store.get("bad.example.com").unwrap();
        assert!(bad.key.is_none() && bad.problem.is_some());
        let c = store.get("c.example.com").unwrap();
        assert!(c.key.is_some() && c.self_signed);
        // The same self-signed certificate across updates (clients pinning it keep working).
        let serial = c.facts.unwrap().serial;
        store.update(&entries, &["c.example.com".to_string()]);
        assert_eq!(
            store.get("c.example.com").unwrap().facts.unwrap().serial,
            serial
        );
        store.update(&entries, &[]);
        assert!(store.get("c.example.com").is_none());
    }
}
