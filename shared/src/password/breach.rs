//! Breached-password lookup with the k-anonymity range protocol (as served by Have I Been
//! Pwned's Pwned Passwords API).
//!
//! The password's SHA-1 is computed locally and upper-case hex encoded; only its first five
//! characters are sent (`GET {base}/range/{prefix}`). The service answers with every known hash
//! suffix under that prefix, one `SUFFIX:COUNT` line each, and the comparison happens here: the
//! password and its full hash never leave the process. `Add-Padding: true` is requested so the
//! response size does not reveal the prefix; padding lines have a count of 0 and are ignored.
//!
//! Responses are cached per prefix for a configurable time, in a bounded map. When the service
//! cannot be asked (network error, timeout, bad status, malformed answer) the configured
//! [`FailureMode`] decides: fail closed (an error, the caller refuses the password) or fail open
//! ([`BreachOutcome::Unchecked`], the caller goes on).
//!
//! The HTTP client is reqwest over rustls without a built-in crypto provider: the process must
//! have installed one (`rustls::crypto::ring::default_provider().install_default()` at start-up);
//! [`BreachChecker::new`] reports its absence as an error instead of panicking.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha1::{Digest as _, Sha1};
use zeroize::{Zeroize as _, Zeroizing};

use crate::secret::SecretString;

/// The public Pwned Passwords service.
pub const DEFAULT_BREACH_BASE_URL: &str = "https://api.pwnedpasswords.com";
/// Largest response accepted (real ones are about 30 KiB, padded ones under 100 KiB).
const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;
/// Length of the hash prefix sent.
const PREFIX_CHARS: usize = 5;
/// Length of a hash suffix in the response.
const SUFFIX_CHARS: usize = 35;

/// What to do when the service cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Return an error: the password is not known to be safe, so it is refused.
    #[default]
    Closed,
    /// Return [`BreachOutcome::Unchecked`]: the password is judged on the other checks alone.
    Open,
}

/// Settings of a [`BreachChecker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreachConfig {
    /// Base URL of the range API; `{base}/range/{prefix}` is requested.
    pub base_url: String,
    /// Time limit of one lookup, connection included.
    pub timeout: Duration,
    /// How long an answer is reused for the same prefix (zero: no caching).
    pub cache_ttl: Duration,
    /// Most prefixes kept in the cache.
    pub cache_capacity: usize,
    /// Behaviour when the service cannot be asked.
    pub failure_mode: FailureMode,
    /// Accept an `http://` base URL (the prefix then travels in clear text). For local tests.
    pub dangerous_allow_http: bool,
}

impl Default for BreachConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BREACH_BASE_URL.to_owned(),
            timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(3600),
            cache_capacity: 4096,
            failure_mode: FailureMode::Closed,
            dangerous_allow_http: false,
        }
    }
}

/// The answer for one password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreachOutcome {
    /// The hash is not in the breach corpus.
    NotFound,
    /// The hash is in the breach corpus, seen `count` times.
    Found {
        /// Times the password was seen in breaches.
        count: u64,
    },
    /// The service could not be asked and the failure mode is [`FailureMode::Open`].
    Unchecked,
}

/// Why a lookup or the checker's construction failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreachError {
    /// The base URL is not an absolute http(s) URL.
    #[error("the breached-password service URL {url:?} is not a valid https URL")]
    InvalidBaseUrl {
        /// The URL as configured.
        url: String,
    },
    /// The base URL is `http://` without `dangerous_allow_http`.
    #[error("the breached-password service URL {url:?} is not https; set dangerous_allow_http only for local tests")]
    InsecureBaseUrl {
        /// The URL as configured.
        url: String,
    },
    /// No rustls crypto provider is installed in the process.
    #[error("no TLS crypto provider is installed; install rustls' ring provider at start-up")]
    NoCryptoProvider,
    /// The HTTP client could not be built.
    #[error("the HTTP client for the breached-password service could not be built: {reason}")]
    Client {
        /// The client library's reason.
        reason: String,
    },
    /// The service could not be asked and the failure mode is [`FailureMode::Closed`].
    #[error("the breached-password service is unavailable ({reason}); the password cannot be checked")]
    Unavailable {
        /// What went wrong (never contains the password or its hash).
        reason: String,
    },
}

/// The suffixes of one range answer with their counts, sorted for binary search.
type Suffixes = Arc<Vec<([u8; SUFFIX_CHARS], u64)>>;

/// A cached answer.
#[derive(Debug)]
struct CacheEntry {
    fetched: Instant,
    suffixes: Suffixes,
}

/// Looks passwords up in a k-anonymity breach corpus. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct BreachChecker {
    client: reqwest::Client,
    base_url: String,
    config: BreachConfig,
    cache: Mutex<HashMap<[u8; PREFIX_CHARS], CacheEntry>>,
}

impl BreachChecker {
    /// Validates the configuration and builds the HTTP client.
    pub fn new(config: BreachConfig) -> Result<Self, BreachError> {
        let url = reqwest::Url::parse(&config.base_url)
            .map_err(|_| BreachError::InvalidBaseUrl { url: config.base_url.clone() })?;
        match url.scheme() {
            "https" => {}
            "http" if config.dangerous_allow_http => {}
            "http" => return Err(BreachError::InsecureBaseUrl { url: config.base_url.clone() }),
            _ => return Err(BreachError::InvalidBaseUrl { url: config.base_url.clone() }),
        }
        if url.cannot_be_a_base() || url.host_str().is_none() {
            return Err(BreachError::InvalidBaseUrl { url: config.base_url.clone() });
        }
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err(BreachError::NoCryptoProvider);
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("pwrelay/", env!("CARGO_PKG_VERSION")))
            .https_only(!config.dangerous_allow_http)
            .build()
            .map_err(|e| BreachError::Client { reason: e.to_string() })?;
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        Ok(Self { client, base_url, config, cache: Mutex::new(HashMap::new()) })
    }

    /// Looks `password` up.
    pub async fn check(&self, password: &SecretString) -> Result<BreachOutcome, BreachError> {
        let mut digest = Sha1::digest(password.expose_secret().as_bytes());
        let mut hex = Zeroizing::new(String::with_capacity(40));
        for byte in digest.iter() {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{byte:02X}");
        }
        digest.as_mut_slice().zeroize();
        let mut prefix = [0u8; PREFIX_CHARS];
        prefix.copy_from_slice(&hex.as_bytes()[..PREFIX_CHARS]);
        let mut suffix = [0u8; SUFFIX_CHARS];
        suffix.copy_from_slice(&hex.as_bytes()[PREFIX_CHARS..]);

        let suffixes = match self.cached(&prefix) {
            Some(s) => s,
            None => match self.fetch(&prefix).await {
                Ok(s) => {
                    self.store(prefix, s.clone());
                    s
                }
                Err(reason) => {
                    return match self.config.failure_mode {
                        FailureMode::Closed => Err(BreachError::Unavailable { reason }),
                        FailureMode::Open => Ok(BreachOutcome::Unchecked),
                    };
                }
            },
        };
        let outcome = match suffixes.binary_search_by(|(s, _)| s.cmp(&suffix)) {
            Ok(i) if suffixes[i].1 > 0 => BreachOutcome::Found { count: suffixes[i].1 },
            _ => BreachOutcome::NotFound,
        };
        suffix.fill(0);
        Ok(outcome)
    }

    fn cached(&self, prefix: &[u8; PREFIX_CHARS]) -> Option<Suffixes> {
        let cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
            .get(prefix)
            .filter(|entry| entry.fetched.elapsed() < self.config.cache_ttl)
            .map(|entry| entry.suffixes.clone())
    }

    fn store(&self, prefix: [u8; PREFIX_CHARS], suffixes: Suffixes) {
        if self.config.cache_ttl.is_zero() || self.config.cache_capacity == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= self.config.cache_capacity && !cache.contains_key(&prefix) {
            let ttl = self.config.cache_ttl;
            cache.retain(|_, entry| entry.fetched.elapsed() < ttl);
            if cache.len() >= self.config.cache_capacity {
                if let Some(oldest) = cache.iter().min_by_key(|(_, e)| e.fetched).map(|(k, _)| *k) {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(prefix, CacheEntry { fetched: Instant::now(), suffixes });
    }

    /// Asks the service; the error is a reason fit for logs (no hash in it).
    async fn fetch(&self, prefix: &[u8; PREFIX_CHARS]) -> Result<Suffixes, String> {
        let prefix = std::str::from_utf8(prefix).map_err(|_| "internal hash encoding error".to_owned())?;
        let url = format!("{}/range/{prefix}", self.base_url);
        let mut response = self.client.get(url).header("Add-Padding", "true").send().await.map_err(describe)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err("response larger than 2 MiB".to_owned());
            }
            body.extend_from_slice(&chunk);
        }
        parse_range(&body).map(Arc::new)
    }
}

/// A reqwest error without its URL (the URL holds the hash prefix).
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        error.without_url().to_string()
    }
}

/// Parses `SUFFIX:COUNT` lines; any malformed line rejects the whole answer.
fn parse_range(body: &[u8]) -> Result<Vec<([u8; SUFFIX_CHARS], u64)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "response is not text".to_owned())?;
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let malformed = || "malformed response line".to_owned();
        let (suffix, count) = line.split_once(':').ok_or_else(malformed)?;
        if suffix.len() != SUFFIX_CHARS || !suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        let count: u64 = count.trim().parse().map_err(|_| malformed())?;
        let mut key = [0u8; SUFFIX_CHARS];
        key.copy_from_slice(suffix.to_ascii_uppercase().as_bytes());
        entries.push((key, count));
    }
    entries.sort_unstable();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    fn install_provider() {
        // Another test may have installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    fn hash_parts(password: &str) -> (String, String) {
        let hex: String = Sha1::digest(password.as_bytes()).iter().map(|b| format!("{b:02X}")).collect();
        (hex[..5].to_owned(), hex[5..].to_owned())
    }

    /// What the fake answers.
    #[derive(Clone)]
    enum Reply {
        Body(String),
        Status(u16),
        Stall,
    }

    /// A fake range API on 127.0.0.1: answers every request with `reply`, counts requests and
    /// records the paths asked.
    struct Fake {
        url: String,
        requests: Arc<AtomicUsize>,
        paths: Arc<Mutex<Vec<String>>>,
    }

    async fn fake(reply: Reply) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (requests.clone(), paths.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let reply = reply.clone();
                let (count, seen) = (count.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let text = String::from_utf8_lossy(&request).to_string();
                    let path = text.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    seen.lock().unwrap().push(path);
                    let (status, body) = match reply {
                        Reply::Body(body) => (200, body),
                        Reply::Status(status) => (status, String::new()),
                        Reply::Stall => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Fake { url, requests, paths }
    }

    fn checker(url: &str, mode: FailureMode, ttl: Duration) -> BreachChecker {
        install_provider();
        BreachChecker::new(BreachConfig {
            base_url: url.to_owned(),
            timeout: Duration::from_millis(500),
            cache_ttl: ttl,
            failure_mode: mode,
            dangerous_allow_http: true,
            ..BreachConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn finds_a_breached_password_and_sends_only_the_prefix() {
        let (prefix, suffix) = hash_parts("P@ssw0rd");
        let body = format!(
            "0018A45C4D1DEF81644B54AB7F969B88D65:1\r\n{suffix}:52256\r\n00D4F6E8FA6EECAD2A3AA415EEC418D38EC:0\r\n"
        );
        let server = fake(Reply::Body(body)).await;
        let c = checker(&server.url, FailureMode::Closed, Duration::from_secs(60));
        let outcome = c.check(&SecretString::from("P@ssw0rd")).await.unwrap();
        assert_eq!(outcome, BreachOutcome::Found { count: 52256 });
        assert_eq!(*server.paths.lock().unwrap(), [format!("/range/{prefix}")]);
    }

    #[tokio::test]
    async fn unknown_and_padding_entries_are_not_found() {
        let (_, suffix) = hash_parts("correct horse battery staple 7");
        // The password's suffix is present only as padding (count 0).
        let body = format!("0018A45C4D1DEF81644B54AB7F969B88D65:3\n{suffix}:0\n");
        let server = fake(Reply::Body(body)).await;
        let c = checker(&server.url, FailureMode::Closed, Duration::from_secs(60));
        let outcome = c.check(&SecretString::from("correct horse battery staple 7")).await.unwrap();
        assert_eq!(outcome, BreachOutcome::NotFound);
    }

    #[tokio::test]
    async fn answers_are_cached_per_prefix_until_they_expire() {
        let server = fake(Reply::Body(String::new())).await;
        let c = checker(&server.url, FailureMode::Closed, Duration::from_millis(300));
        let password = SecretString::from("Some!Password1");
        c.check(&password).await.unwrap();
        c.check(&password).await.unwrap();
        assert_eq!(server.requests.load(Ordering::SeqCst), 1, "second lookup served from the cache");
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.check(&password).await.unwrap();
        assert_eq!(server.requests.load(Ordering::SeqCst), 2, "expired entry fetched again");

        let uncached = checker(&server.url, FailureMode::Closed, Duration::ZERO);
        uncached.check(&password).await.unwrap();
        uncached.check(&password).await.unwrap();
        assert_eq!(server.requests.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn cache_stays_within_its_capacity() {
        let server = fake(Reply::Body(String::new())).await;
        install_provider();
        let c = BreachChecker::new(BreachConfig {
            base_url: server.url.clone(),
            cache_capacity: 3,
            dangerous_allow_http: true,
            ..BreachConfig::default()
        })
        .unwrap();
        for i in 0..10 {
            c.check(&SecretString::from(format!("password number {i}"))).await.unwrap();
        }
        assert!(c.cache.lock().unwrap().len() <= 3);
    }

    #[tokio::test]
    async fn fail_closed_and_fail_open() {
        let server = fake(Reply::Status(503)).await;
        let closed = checker(&server.url, FailureMode::Closed, Duration::from_secs(60));
        let err = closed.check(&SecretString::from("x")).await.unwrap_err();
        assert_eq!(err, BreachError::Unavailable { reason: "HTTP status 503".into() });
        let open = checker(&server.url, FailureMode::Open, Duration::from_secs(60));
        assert_eq!(open.check(&SecretString::from("x")).await.unwrap(), BreachOutcome::Unchecked);
        // Failures are not cached.
        assert_eq!(open.check(&SecretString::from("x")).await.unwrap(), BreachOutcome::Unchecked);
        assert_eq!(server.requests.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn timeouts_unreachable_servers_and_garbage_are_failures() {
        let stalled = fake(Reply::Stall).await;
        let c = checker(&stalled.url, FailureMode::Closed, Duration::from_secs(60));
        let err = c.check(&SecretString::from("x")).await.unwrap_err();
        assert_eq!(err, BreachError::Unavailable { reason: "timed out".into() });

        // A port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let c = checker(&url, FailureMode::Closed, Duration::from_secs(60));
        let err = c.check(&SecretString::from("x")).await.unwrap_err();
        assert!(matches!(err, BreachError::Unavailable { .. }), "{err:?}");

        let garbage = fake(Reply::Body("<html>not an API</html>".into())).await;
        let c = checker(&garbage.url, FailureMode::Closed, Duration::from_secs(60));
        let err = c.check(&SecretString::from("x")).await.unwrap_err();
        assert_eq!(err, BreachError::Unavailable { reason: "malformed response line".into() });
        assert!(!err.to_string().contains(&hash_parts("x").0), "no hash prefix in the error");
    }

    #[test]
    fn configuration_is_validated() {
        install_provider();
        let config = |url: &str, http: bool| BreachConfig {
            base_url: url.to_owned(),
            dangerous_allow_http: http,
            ..BreachConfig::default()
        };
        assert!(BreachChecker::new(BreachConfig::default()).is_ok());
        assert_eq!(
            BreachChecker::new(config("http://127.0.0.1:1", false)).unwrap_err(),
            BreachError::InsecureBaseUrl { url: "http://127.0.0.1:1".into() }
        );
        assert!(matches!(
            BreachChecker::new(config("ftp://example.com", true)),
            Err(BreachError::InvalidBaseUrl { .. })
        ));
        assert!(matches!(BreachChecker::new(config("not a url", true)), Err(BreachError::InvalidBaseUrl { .. })));
    }

    #[test]
    fn range_parsing() {
        let parsed = parse_range(b"0018a45c4d1def81644b54ab7f969b88d65:10\r\n\r\n").unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(&parsed[0].0[..4], b"0018");
        assert!(parse_range(b"0018A45C4D1DEF81644B54AB7F969B88D65").is_err());
        assert!(parse_range(b"XYZ:1").is_err());
        assert!(parse_range(b"0018A45C4D1DEF81644B54AB7F969B88D65:many").is_err());
        assert_eq!(parse_range(b"").unwrap(), Vec::new());
    }
}
