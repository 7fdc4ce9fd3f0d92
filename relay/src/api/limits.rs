//! `[api.limits]`: what one connection, one request and one client may take of the public API
//! (timeouts, connection and stream caps, request rates) and which proxies may name the client's
//! address. Every key has a safe default; `deploy/config/relay.full.toml` documents each one.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use ipnet::IpNet;
use pwrelay_shared::config::ConfigError;
use serde::Deserialize;

/// `[api.limits]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    #[serde(default = "defaults::tls_handshake_timeout_seconds")]
    tls_handshake_timeout_seconds: u64,
    #[serde(default = "defaults::header_read_timeout_seconds")]
    header_read_timeout_seconds: u64,
    #[serde(default = "defaults::body_read_timeout_seconds")]
    body_read_timeout_seconds: u64,
    #[serde(default = "defaults::request_timeout_seconds")]
    request_timeout_seconds: u64,
    #[serde(default = "defaults::idle_timeout_seconds")]
    idle_timeout_seconds: u64,
    #[serde(default = "defaults::lingering_close_seconds")]
    lingering_close_seconds: u64,
    #[serde(default = "defaults::max_connections")]
    max_connections: usize,
    #[serde(default = "defaults::max_header_bytes")]
    max_header_bytes: usize,
    #[serde(default = "defaults::http2_max_concurrent_streams")]
    http2_max_concurrent_streams: u32,
    #[serde(default = "defaults::requests_per_second_per_address")]
    requests_per_second_per_address: u32,
    #[serde(default = "defaults::burst_per_address")]
    burst_per_address: u32,
    #[serde(default = "defaults::requests_per_second_per_client")]
    requests_per_second_per_client: u32,
    #[serde(default = "defaults::burst_per_client")]
    burst_per_client: u32,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    client_address_header: ForwardedHeader,
}

/// The header trusted proxies name the client's address in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1` (most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl Default for LimitsFile {
    fn default() -> Self {
        // Every field has a serde default; an empty table is the defaults.
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty [api.limits] is valid"))
    }
}

/// The defaults, one function per key (serde's `default = "..."` names them).
mod defaults {
    pub(super) fn tls_handshake_timeout_seconds() -> u64 {
        10
    }
    pub(super) fn header_read_timeout_seconds() -> u64 {
        10
    }
    pub(super) fn body_read_timeout_seconds() -> u64 {
        30
    }
    pub(super) fn request_timeout_seconds() -> u64 {
        // Above the longest long poll (`GET /v1/jobs/{id}?wait=60`).
        90
    }
    pub(super) fn idle_timeout_seconds() -> u64 {
        60
    }
    pub(super) fn lingering_close_seconds() -> u64 {
        5
    }
    pub(super) fn max_connections() -> usize {
        4096
    }
    pub(super) fn max_header_bytes() -> usize {
        16 * 1024
    }
    pub(super) fn http2_max_concurrent_streams() -> u32 {
        100
    }
    pub(super) fn requests_per_second_per_address() -> u32 {
        // Behind a load balancer without `trusted_proxies`, every client shares one address.
        200
    }
    pub(super) fn burst_per_address() -> u32 {
        1000
    }
    pub(super) fn requests_per_second_per_client() -> u32 {
        100
    }
    pub(super) fn burst_per_client() -> u32 {
        1000
    }
}

/// The validated `[api.limits]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Longest TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Longest wait for a request's headers (HTTP/1.1: from the connection's start or the end of
    /// the previous response).
    pub header_read_timeout: Duration,
    /// Longest time from a request's headers to the last byte of its body.
    pub body_read_timeout: Duration,
    /// Longest time from a request's headers to its response (long polls included).
    pub request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// After its last response, how long a closing connection's unread input is drained so that
    /// the client can read the response (a 413 to an upload still being sent).
    pub lingering_close: Duration,
    /// Open connections at once (TLS handshakes included); further ones wait in the listen
    /// backlog.
    pub max_connections: usize,
    /// Largest request head (HTTP/1.1) or header list (HTTP/2).
    pub max_header_bytes: usize,
    /// Requests in flight at once on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// Steady request rate allowed per client address.
    pub requests_per_second_per_address: NonZeroU32,
    /// Requests one client address may send at once above that rate.
    pub burst_per_address: NonZeroU32,
    /// Steady request rate allowed per API client (token).
    pub requests_per_second_per_client: NonZeroU32,
    /// Requests one API client may send at once above that rate.
    pub burst_per_client: NonZeroU32,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` name the client's address.
    pub trusted_proxies: Vec<IpNet>,
    /// Which of the two headers the trusted proxies write (only that one is read: a client could
    /// send the other with any address in it).
    pub client_address_header: ForwardedHeader,
}

impl Default for ApiLimits {
    fn default() -> Self {
        LimitsFile::default().validate().unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }
}

impl LimitsFile {
    /// Checks the values; an error names the key.
    pub fn validate(self) -> Result<ApiLimits, ConfigError> {
        let seconds = |key: &str, value: u64| {
            if value == 0 {
                Err(ConfigError::invalid(format!("api.limits.{key}"), "must be at least 1"))
            } else {
                Ok(Duration::from_secs(value))
            }
        };
        let rate = |key: &str, value: u32| {
            NonZeroU32::new(value)
                .ok_or_else(|| ConfigError::invalid(format!("api.limits.{key}"), "must be at least 1"))
        };
        let request_timeout = seconds("request_timeout_seconds", self.request_timeout_seconds)?;
        if request_timeout <= Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "api.limits.request_timeout_seconds",
                "must be above 60, the longest long poll (GET /v1/jobs/{id}?wait=60)",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::invalid("api.limits.max_connections", "must be at least 1"));
        }
        if self.max_header_bytes < 4096 {
            return Err(ConfigError::invalid("api.limits.max_header_bytes", "must be at least 4096"));
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err(ConfigError::invalid("api.limits.http2_max_concurrent_streams", "must be at least 1"));
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                    ConfigError::invalid(
                        format!("api.limits.trusted_proxies[{i}]"),
                        "must be an address (10.0.0.5) or a network (10.0.0.0/8, fd00::/8)",
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ApiLimits {
            tls_handshake_timeout: seconds("tls_handshake_timeout_seconds", self.tls_handshake_timeout_seconds)?,
            header_read_timeout: seconds("header_read_timeout_seconds", self.header_read_timeout_seconds)?,
            body_read_timeout: seconds("body_read_timeout_seconds", self.body_read_timeout_seconds)?,
            request_timeout,
            idle_timeout: seconds("idle_timeout_seconds", self.idle_timeout_seconds)?,
            // 0 is allowed: close at once.
            lingering_close: Duration::from_secs(self.lingering_close_seconds),
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            requests_per_second_per_address: rate(
                "requests_per_second_per_address",
                self.requests_per_second_per_address,
            )?,
            burst_per_address: rate("burst_per_address", self.burst_per_address)?,
            requests_per_second_per_client: rate(
                "requests_per_second_per_client",
                self.requests_per_second_per_client,
            )?,
            burst_per_client: rate("burst_per_client", self.burst_per_client)?,
            trusted_proxies,
            client_address_header: self.client_address_header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ApiLimits, ConfigError> {
        toml::from_str::<LimitsFile>(text).map_err(|e| ConfigError::invalid("api.limits", e.to_string()))?.validate()
    }

    #[test]
    fn defaults_are_safe() {
        let limits = ApiLimits::default();
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert!(limits.request_timeout > Duration::from_secs(60));
        assert_eq!(limits.max_connections, 4096);
        assert!(limits.trusted_proxies.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("idle_timeout_seconds = 0").expect_err("zero").to_string();
        assert!(e.starts_with("api.limits.idle_timeout_seconds"), "{e}");
        let e = parse("request_timeout_seconds = 30").expect_err("below the long poll").to_string();
        assert!(e.starts_with("api.limits.request_timeout_seconds"), "{e}");
        let e = parse("trusted_proxies = [\"10.0.0.0/8\", \"lb.example\"]").expect_err("a name").to_string();
        assert!(e.starts_with("api.limits.trusted_proxies[1]"), "{e}");
        let limits = parse("trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\"]").expect("valid");
        assert_eq!(limits.trusted_proxies.len(), 3);
        assert!(limits.trusted_proxies[1].contains(&"192.0.2.7".parse::<IpAddr>().expect("ip")));
    }
}
