//! ingressd: serves an Uncloud network's published services to the internet.
//!
//! # Background
//! A service publishes `app.example.com:8000/https` (Compose `x-ports`, `uc run -p`); people
//! reach `https://app.example.com` on any machine with the `ingress` role, and the request
//! goes to one of the service's containers wherever it runs on the mesh. The certificate is
//! ordered once (ACME, Let's Encrypt by default) and kept in the replicated state, so every
//! ingress machine serves the same one and any of them answers the CA's challenge.
//!
//! # Design
//! - [`routes`] (pure) builds the routing table from the state: hostname and longest path
//!   prefix → service → upstreams (running, healthy, not draining containers on reachable
//!   machines); [`balance`] picks an upstream (round-robin or least connections) and skips
//!   ones that recently failed (passive health).
//! - [`proxy`] answers one request (ACME challenge, redirect to HTTPS, 404, or forward with
//!   `X-Forwarded-*`, upgrades, streaming, retry when nothing was sent) through [`pool`]'s
//!   kept-alive upstream connections, spoken to by [`upstream`] on the request's own task
//!   (requests without a body) or by hyper's client; [`server`] runs the HTTP and HTTPS
//!   listeners with their [`limits`]: HTTP/1.1 connections start in [`front`], which reads,
//!   forwards and answers plain requests itself and hands a connection to hyper's server
//!   ([`hyper_conn`]) at its first other request; HTTP/2 (by ALPN) goes to hyper's server;
//!   [`idle`] times connections out on silence (clients' idle timeout, upstreams' response
//!   timeout) with one timer per connection.
//! - [`certs`] serves certificates by SNI and answers HTTP-01 from the state's entries;
//!   [`bundle`] reads and makes them; [`ordering`] (pure) decides who orders what and when;
//!   [`acme`] orders with rustls-acme's account and order calls.
//! - [`release`] (pure) says which draining containers this machine has let go of, so the
//!   machine that runs one removes it only after ingress stopped sending to it.
//! - [`view`] and [`mirror`] keep this machine's copy of the state; [`dbus`] shows what is
//!   served (`org.uncloud.Ingress1`); [`daemon`] wires it all.
//! - [`cli`]: the command line and entry point, run by the binary and by the image's
//!   multi-call executable.
//!
//! # Limitations
//! - HTTP-01 only: a hostname must resolve to the ingress machines on port 80 (no wildcard
//!   certificates, which need DNS-01).
//! - Upstreams are spoken to in HTTP/1.1 (WebSocket included); not HTTP/2 or gRPC upstreams.
//! - A certificate entry stays in the state after its hostname stops being published.

pub mod acme;
pub mod balance;
pub mod bundle;
pub mod certs;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod front;
pub mod hyper_conn;
pub mod idle;
pub mod limits;
pub mod mirror;
pub mod ordering;
pub mod pool;
pub mod proxy;
pub mod release;
pub mod routes;
pub mod server;
pub mod upstream;
pub mod view;
