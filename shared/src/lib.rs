//! pwrelay-shared: the library the relay and the agent both use.
//!
//! - [`config`]: reading and parsing the binaries' TOML configuration files.
//! - [`secret`]: zeroizing secret types with redacted `Debug`.
//! - [`domain`]: validated names (AD DNS domain names, agent names).
//! - [`identity`]: the agent identity carried in its client certificate.
//! - [`pki`]: the private CA, relay server and agent client certificates.
//! - [`shutdown`]: the signal both binaries stop on.
//! - [`telemetry`]: log output of both binaries.
//! - [`tls`]: every rustls configuration of the product is built here.
//! - [`policy`], [`password`], [`derive`]: the password engine (AD policy, banned-password
//!   evaluation, generation, seed-compatible derivation).

pub mod config;
pub mod derive;
pub mod domain;
pub mod enrollment;
pub mod identity;
pub mod password;
pub mod pki;
pub mod policy;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

#[cfg(feature = "testkit")]
pub mod testkit;
