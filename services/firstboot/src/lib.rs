//! `uncloud-firstboot`: a machine's own setup at boot, before and after the daemons.
//!
//! # Background
//! An Uncloud image is the same bytes on every machine and holds no secret. What makes a
//! machine itself (its TLS key, the one-time setup token that lets `uc machine init` claim it,
//! a join ticket that makes it join a network on its own) is made or collected on the machine
//! at boot. A person then needs to see, on the console, whether the machine came up and how to
//! reach it: its addresses, certificate fingerprint and setup token.
//!
//! # Design
//! Two commands, each run by its own unit:
//! - `init` ([`init`], `uncloud-firstboot.service`, before the daemons): takes a token and a
//!   ticket from cloud-init's files or the Raspberry Pi's boot partition ([`setup_file`]),
//!   checks them ([`token`]), moves them to `/var/lib/uncloud/identity/` with atomic, fsynced
//!   writes ([`store`]), and makes a token and a TLS key and certificate ([`tls`]) if missing.
//! - `banner` ([`banner`], `uncloud-banner.service`, after every unit of `uncloud.target`):
//!   waits for them and Docker to be active and prints the banner on every console.
//!
//! Both are safe to run again: `init` only fills in what is missing or newly given.
//!
//! # Limitations
//! - firstboot only makes and collects the files: apid serves the setup API with the key and
//!   checks the token, redeems a pre-seeded join ticket, and removes both once the machine is
//!   a member. A token or ticket given again after that is stored again but claims nothing:
//!   apid refuses a member's setup.
//! - The banner is printed once per boot (and on `uncloud-firstboot banner`); it is not updated
//!   when an address changes later.

pub mod banner;
pub mod cli;
pub mod init;
pub mod setup_file;
pub mod store;
pub mod tls;
pub mod token;
