//! The agent's access to Active Directory over LDAP with TLS.
//!
//! [`Directory`] holds one domain's settings. Connections go to the first DC in the configured
//! list that answers (LDAPS, or LDAP followed by StartTLS; certificates verified against the
//! configured CA; plaintext never) and bind as the service account. Each job borrows one from a
//! small pool (`connections`), resolves the target to exactly one user with one search (the
//! attributes every rule needs), applies the [`rules`] (scope, protection, state), makes its write
//! and reads back what the write changed.
//!
//! Writes go through one connection shared by all jobs (when it is bound to the same DC as the
//! job's own; otherwise through the job's). A DC applies writes one at a time: on one connection
//! they wait at the DC back to back, while the other jobs' searches and read-backs run next to
//! them on their own connections. (Measured on Samba: several connections writing at once are
//! slower than one, as they contend for the database lock; see BENCHMARKS.md.)
//!
//! The service account binds with its DN and password (LDAP simple bind), or, with
//! `bind = "kerberos"` and the `kerberos` feature, with SASL GSSAPI and the process's Kerberos
//! credentials (inside the TLS session, with the tls-server-end-point channel binding). Checks of a
//! user's password are always simple binds.

mod account;
mod connection;
pub mod discovery;
pub mod error;
mod rules;
pub mod service_credential;
pub mod target;

use std::sync::Arc;

use ldap3::{LdapConnAsync, LdapConnSettings};
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::domain::DomainName;
use pwrelay_shared::policy::Policy;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::tls::{self, TrustAnchors};

pub use account::Account;
/// The attributes read with an account, and those read back after a write (for benchmarks that
/// mirror the agent's directory work).
pub use account::{ATTRIBUTES as ACCOUNT_ATTRIBUTES, READ_BACK_ATTRIBUTES};
use connection::{Change, Connection};
pub use connection::{WriteOptions, unicode_pwd};
pub use error::DirectoryError;
pub use service_credential::CredentialRefusal;
use service_credential::ServiceCredential;
pub use target::AccountTarget;

use crate::config::{BindMethod, DomainConfig, LdapTransport};

/// What a job did to an account, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The account after the job.
    pub account: Account,
    /// The DC that did the work.
    pub dc_url: String,
    /// Whether the read-back shows what was asked.
    pub verified: bool,
    /// For verification jobs: whether the password is the account's current one.
    pub password_matches: bool,
    /// Remarks for the requester.
    pub notes: Vec<String>,
}

/// What decides whether a write may start now, and how long it may take: the job's lease
/// (`jobs::lease::JobLease`). Asked right before each LDAP write, after everything else is done.
pub trait WriteGate: Send + Sync {
    /// Admits a write whose own timeout is `timeout`: the timeout to use (possibly shorter), or the
    /// error to fail the job with, nothing written.
    fn admit_write(&self, timeout: std::time::Duration) -> Result<std::time::Duration, DirectoryError>;

    /// Whether the work is still this holder's to report: a write whose answer was lost is looked
    /// into only while it is ([`Directory::write`]).
    fn held(&self) -> bool {
        true
    }
}

/// For directory work outside a leased job (benchmarks, tools): every write is admitted as it is.
#[derive(Debug, Clone, Copy)]
pub struct Unleased;

impl WriteGate for Unleased {
    fn admit_write(&self, timeout: std::time::Duration) -> Result<std::time::Duration, DirectoryError> {
        Ok(timeout)
    }
}

/// How a bind with a user's password ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The password is right (the logon itself may still be refused: must change, disabled).
    Matches,
    /// The password is wrong.
    Wrong,
    /// The account is locked out: the DC does not check the password.
    LockedOut,
}

/// One AD domain as the agent reaches it.
pub struct Directory {
    config: DomainConfig,
    tls: Arc<rustls::ClientConfig>,
    /// The protected groups with the groups nested in them, read at most every
    /// [`rules::PROTECTED_GROUPS_TTL`].
    protected_groups: tokio::sync::Mutex<Option<Arc<rules::ProtectedGroups>>>,
    /// The service account's connections, each lent to one job at a time.
    pool: Pool,
    /// The connection every write goes through, shared by concurrent jobs (ldap3 multiplexes
    /// operations): a DC applies writes one at a time, and on one connection they queue at the DC
    /// back to back instead of contending for its database lock from several connections.
    writer: tokio::sync::Mutex<Option<Connection>>,
    /// Effective password policies read recently, by source DN (domain head or PSO).
    policies: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Policy)>>,
    /// The service account's password and whether a DC refused it (`bind = "simple"` only):
    /// every service-account bind, the health check's and the jobs', asks it first.
    credential: Option<ServiceCredential>,
}

/// The service account's bound connections to one domain: at most `connections` open, each lent
/// to one job at a time ([`Lease`]). A DC applies writes one after another, but it serves searches
/// on other connections meanwhile, so one job's account search, rule checks and read-back run next
/// to another job's write instead of queueing behind it on a shared connection.
struct Pool {
    idle: std::sync::Mutex<Vec<Connection>>,
    permits: tokio::sync::Semaphore,
}

impl Pool {
    fn new(connections: usize) -> Self {
        Self { idle: std::sync::Mutex::default(), permits: tokio::sync::Semaphore::new(connections.max(1)) }
    }

    /// The most recently returned connection that is still open.
    fn take_idle(&self) -> Option<Connection> {
        // Only pushes and pops under the lock: a panicked holder leaves the list consistent.
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(mut conn) = idle.pop() {
            if !conn.ldap.is_closed() {
                return Some(conn);
            }
        }
        None
    }
}

/// A pooled connection lent to one job. Dropping it gives it back, unless an operation on it
/// failed at the connection level ([`Lease::settle`]): then it is closed and the next job opens a
/// new one.
struct Lease<'a> {
    conn: Connection,
    pool: &'a Pool,
    retired: bool,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Lease<'_> {
    /// Passes `result` on; a connection-level failure retires the connection.
    fn settle<T>(&mut self, result: Result<T, DirectoryError>) -> Result<T, DirectoryError> {
        if result.as_ref().is_err_and(|e| e.retryable) {
            self.retired = true;
        }
        result
    }
}

impl std::ops::Deref for Lease<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.retired && !self.conn.ldap.is_closed() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            idle.push(self.conn.clone());
        }
    }
}

/// A DC's refusal of a bind.
struct BindRefusal {
    /// The DC that answered.
    dc: String,
    /// Its answer.
    result: ldap3::LdapResult,
}

/// How a connection authenticates.
#[derive(Clone, Copy)]
enum Login<'a> {
    /// LDAP simple bind with a DN and password.
    Simple { dn: &'a str, password: &'a str },
    /// SASL GSSAPI bind with the process's Kerberos credentials, for the service principal
    /// `ldap/<host of the DC URL>`.
    Kerberos,
}

/// How long a password write whose answer was lost is looked into before the job is reported as
/// failed with its outcome unknown (while the DC cannot be read, say).
const LOST_ANSWER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a password policy read from the directory is reused.
const POLICY_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// An account admitted for a password write: resolved, in scope, not protected, no conflicting
/// options; with the password policy that applies to it.
pub struct PreparedWrite<'a> {
    conn: Lease<'a>,
    /// The account as read before the write.
    pub account: Account,
    /// The effective policy (the account's PSO when readable, else the domain's).
    pub policy: Policy,
    /// Remarks for the requester.
    pub notes: Vec<String>,
}

impl std::fmt::Debug for PreparedWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedWrite").field("account", &self.account.dn).finish_non_exhaustive()
    }
}

/// One DC's answer to a health bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcHealth {
    /// The DC URL.
    pub url: String,
    /// The bind worked.
    pub ok: bool,
    /// The error, when it did not.
    pub detail: String,
    /// How long connecting and binding took, when it got that far.
    pub latency: Option<std::time::Duration>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").field("domain", &self.config.name).finish_non_exhaustive()
    }
}

impl Directory {
    /// Loads the DC CA and prepares the TLS settings.
    pub fn new(config: DomainConfig) -> Result<Self, tls::TlsError> {
        let anchors = TrustAnchors::from_file(&config.ca_file)?;
        let credential = (config.bind == BindMethod::Simple).then(|| {
            ServiceCredential::new(
                config.bind_password.clone(),
                config.bind_password_file.clone(),
                config.refused_bind_retry,
                config.refused_bind_retry_max,
            )
        });
        Ok(Self {
            tls: tls::ldap_client(&anchors)?,
            pool: Pool::new(config.connections),
            credential,
            config,
            protected_groups: tokio::sync::Mutex::new(None),
            writer: tokio::sync::Mutex::new(None),
            policies: std::sync::Mutex::default(),
        })
    }

    /// The domain.
    pub fn domain(&self) -> &DomainName {
        &self.config.name
    }

    /// The domain's configuration.
    pub fn config(&self) -> &DomainConfig {
        &self.config
    }

    /// Opens an LDAP connection to the first DC that answers and logs in. A bind refusal that is
    /// not about reachability ends the search: every DC of a domain gives the same answer.
    async fn bind(&self, login: Login<'_>, what: &str) -> Result<Result<Connection, BindRefusal>, DirectoryError> {
        let urls = self.dc_urls().await?;
        self.bind_to(&urls, login, what).await
    }

    /// How the service account logs in, as configured (`bind`), with the password of `attempt`.
    fn service_login<'a>(&'a self, attempt: Option<&'a service_credential::Attempt<'_>>) -> Login<'a> {
        match self.config.bind {
            BindMethod::Simple => Login::Simple {
                dn: &self.config.bind_dn,
                password: attempt.map(service_credential::Attempt::password).unwrap_or_default(),
            },
            BindMethod::Kerberos => Login::Kerberos,
        }
    }

    /// Leave for one service-account bind: refused while the DCs' last answer to the password
    /// stands (see [`service_credential`]). `None` for Kerberos binds, which have no password.
    async fn service_attempt(&self) -> Result<Option<service_credential::Attempt<'_>>, DirectoryError> {
        let Some(credential) = &self.credential else { return Ok(None) };
        credential.attempt().await.map(Some).map_err(|refusal| {
            DirectoryError::new(FailureCode::AccessDenied, refusal.message(tokio::time::Instant::now()))
        })
    }

    /// Records a service-account bind's answer with the credential and passes it on: a refused
    /// password (a wrong one, or a locked-out account) is not tried again for a while.
    fn settle_service_bind(
        &self,
        attempt: Option<service_credential::Attempt<'_>>,
        bound: Result<Connection, BindRefusal>,
    ) -> Result<Connection, DirectoryError> {
        match bound {
            Ok(conn) => {
                if let Some(attempt) = attempt {
                    attempt.accepted();
                }
                Ok(conn)
            }
            Err(refusal) => {
                let result = &refusal.result;
                let wrong = result.rc == 49 && classify_bind(&result.text) != PasswordCheck::Matches;
                if let (Some(attempt), true) = (attempt, wrong) {
                    let answer = format!("{} (LDAP result {})", result.text.trim_end_matches('\0').trim(), result.rc);
                    attempt.refused(&refusal.dc, &answer);
                }
                Err(self.service_bind_refused(result))
            }
        }
    }

    /// The service account's refused password, while it is not being used.
    pub fn credential_refusal(&self) -> Option<CredentialRefusal> {
        self.credential.as_ref().and_then(ServiceCredential::refusal)
    }

    /// The error of a refused service-account bind.
    fn service_bind_refused(&self, result: &ldap3::LdapResult) -> DirectoryError {
        match self.config.bind {
            BindMethod::Simple => DirectoryError::from_result("service account bind", result.rc, &result.text),
            BindMethod::Kerberos => {
                let mut e = DirectoryError::from_result("service account kerberos bind", result.rc, &result.text);
                let text = result.text.trim_end_matches('\0').trim();
                match result.rc {
                    // from_result's hint is about bind_dn and a password, neither of which is used.
                    49 => {
                        e.message = format!(
                            "service account kerberos bind failed: {text} (LDAP result 49); the DC refused the \
                             agent's Kerberos credentials: check that their principal is the delegated service \
                             account and that it is enabled"
                        );
                    }
                    // strongerAuthRequired: the DC wants SASL signing or sealing even inside TLS.
                    8 => e.message.push_str(
                        "; the DC refuses SASL binds inside TLS without signing (on Samba set \
                         `ldap server require strong auth = allow_sasl_over_tls`; Windows AD accepts them)",
                    ),
                    _ => {}
                }
                e
            }
        }
    }

    /// The DCs to try, in order: the configured list, or what DNS discovery finds now.
    async fn dc_urls(&self) -> Result<Vec<crate::config::DcUrl>, DirectoryError> {
        match &self.config.discovery {
            Some(discovery) => discovery.discover(&self.config.name).await,
            None => Ok(self.config.urls.clone()),
        }
    }

    async fn bind_to(
        &self,
        urls: &[crate::config::DcUrl],
        login: Login<'_>,
        what: &str,
    ) -> Result<Result<Connection, BindRefusal>, DirectoryError> {
        let mut failures = Vec::new();
        for dc in urls {
            if matches!(login, Login::Kerberos) && dc.host_is_ip_address() {
                return Err(DirectoryError::new(
                    FailureCode::DirectoryError,
                    format!(
                        "{what} to {}: a kerberos bind needs the DC's DNS host name in the URL, not an IP address \
                         (the service ticket is for ldap/<host>)",
                        dc.url
                    ),
                ));
            }
            let settings = LdapConnSettings::new()
                .set_conn_timeout(self.config.timeout)
                .set_config(Arc::clone(&self.tls))
                .set_starttls(dc.transport == LdapTransport::StartTls);
            let (conn, mut ldap) = match LdapConnAsync::with_settings(settings, &dc.url).await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(dc = %dc.url, error = %e, "domain controller unreachable; trying the next one");
                    failures.push(format!("{}: {e}", dc.url));
                    continue;
                }
            };
            ldap3::drive!(conn);
            ldap.with_timeout(self.config.timeout);
            let bound = match login {
                Login::Simple { dn, password } => crate::metrics::ldap("bind", ldap.simple_bind(dn, password)).await,
                Login::Kerberos => match crate::metrics::ldap("bind", kerberos_bind(&mut ldap, dc)).await {
                    Err(KerberosFailure::Bind(e)) => Err(e),
                    Err(KerberosFailure::Credentials(e)) => {
                        let _ = ldap.unbind().await;
                        return Err(e);
                    }
                    Ok(result) => Ok(result),
                },
            };
            match bound {
                Ok(result) if result.rc == 0 => {
                    return Ok(Ok(Connection {
                        ldap,
                        url: dc.url.clone(),
                        server: None,
                        timeout: self.config.timeout,
                    }));
                }
                Ok(result) if matches!(result.rc, 51 | 52) => failures.push(format!("{}: busy or unavailable", dc.url)),
                Ok(result) => {
                    let _ = ldap.unbind().await;
                    return Ok(Err(BindRefusal { dc: dc.url.clone(), result }));
                }
                Err(e) => {
                    tracing::warn!(dc = %dc.url, error = %e, "{what} failed on this domain controller; trying the next one");
                    failures.push(format!("{}: {e}", dc.url));
                }
            }
        }
        Err(DirectoryError::unavailable(format!(
            "no domain controller of {} answered: {}",
            self.config.name,
            failures.join("; ")
        )))
    }

    /// A service-account connection for one job: an idle pooled one, or a new one (with failover)
    /// when none is idle. Waits while `connections` are lent out.
    async fn connect(&self) -> Result<Lease<'_>, DirectoryError> {
        let permit = self
            .pool
            .permits
            .acquire()
            .await
            .map_err(|_| DirectoryError::unavailable("the agent is stopping; no new directory work".to_owned()))?;
        let conn = match self.pool.take_idle() {
            Some(conn) => conn,
            None => self.open().await?,
        };
        Ok(Lease { conn, pool: &self.pool, retired: false, _permit: permit })
    }

    /// Opens and binds a new service-account connection.
    ///
    /// Only these connections learn which DC they reach (for sharing the writer); the binds as an
    /// account or for health checks do not need to.
    async fn open(&self) -> Result<Connection, DirectoryError> {
        let attempt = self.service_attempt().await?;
        let bound = self.bind(self.service_login(attempt.as_ref()), "service account bind").await?;
        let mut conn = self.settle_service_bind(attempt, bound)?;
        conn.server = connection::server_identity(&mut conn.ldap, self.config.timeout).await;
        Ok(conn)
    }

    /// Makes `change` through the shared writer connection when it is bound to the same DC as the
    /// job's `lease` (the read-back must see the write), otherwise through the lease itself; only
    /// if `gate` admits it at that moment, and within the time it allows.
    async fn change(
        &self,
        lease: &mut Lease<'_>,
        dn: &str,
        change: &Change<'_>,
        gate: &dyn WriteGate,
    ) -> Result<(), DirectoryError> {
        let Some(mut writer) = self.writer_to(lease.server.as_deref()).await else {
            let timeout = gate.admit_write(lease.timeout)?;
            let own = std::mem::replace(&mut lease.conn.timeout, timeout);
            let changed = lease.apply(dn, change).await;
            lease.conn.timeout = own;
            return lease.settle(changed);
        };
        // The writer is a handle of its own: its timeout is this write's alone.
        writer.timeout = gate.admit_write(writer.timeout)?;
        let changed = writer.apply(dn, change).await;
        if changed.as_ref().is_err_and(|e| e.retryable) {
            // Broken: the next write opens a new one.
            self.writer.lock().await.take();
        }
        changed
    }

    /// The shared writer connection if it is bound to the DC `server` (by its identity, not its
    /// URL, which may name several DCs). It is opened (with failover) only when there is none or it
    /// has closed, so a writer left on another DC costs no reconnects. An unknown identity on
    /// either side means no sharing.
    async fn writer_to(&self, server: Option<&str>) -> Option<Connection> {
        let server = server?;
        let mut writer = self.writer.lock().await;
        let live = writer.as_mut().is_some_and(|conn| !conn.ldap.is_closed());
        let open = match writer.as_ref() {
            Some(conn) if live => conn.clone(),
            _ => {
                let conn = self.open().await.ok()?;
                *writer = Some(conn.clone());
                conn
            }
        };
        (open.server.as_deref() == Some(server)).then_some(open)
    }

    /// Binds as the service account through the usual failover and returns the DC URL that
    /// answered.
    pub async fn check_bind(&self) -> Result<String, DirectoryError> {
        Ok(self.connect().await?.url.clone())
    }

    /// Binds to every configured DC on its own (not pooled) and reports each (readiness detail).
    pub async fn check_each_dc(&self) -> Vec<DcHealth> {
        let urls = match self.dc_urls().await {
            Ok(urls) => urls,
            Err(e) => return vec![DcHealth { url: "dns-srv".into(), ok: false, detail: e.message, latency: None }],
        };
        let mut health = Vec::new();
        for dc in &urls {
            // A refused password is not tried on the next DC either: each would count a failed logon.
            let attempt = match self.service_attempt().await {
                Ok(attempt) => attempt,
                Err(e) => {
                    health.push(DcHealth { url: dc.url.clone(), ok: false, detail: e.message, latency: None });
                    continue;
                }
            };
            let started = tokio::time::Instant::now();
            let bound =
                self.bind_to(std::slice::from_ref(dc), self.service_login(attempt.as_ref()), "health bind").await;
            let latency = bound.is_ok().then(|| started.elapsed());
            let (ok, detail) = match bound {
                Ok(bound) => match self.settle_service_bind(attempt, bound) {
                    Ok(mut conn) => {
                        let _ = conn.ldap.unbind().await;
                        (true, String::new())
                    }
                    Err(e) => (false, e.message),
                },
                Err(e) => (false, e.message),
            };
            health.push(DcHealth { url: dc.url.clone(), ok, detail, latency });
        }
        health
    }

    /// Connects, resolves the target and applies scope and protection rules.
    async fn admit(&self, target: &AccountTarget) -> Result<(Lease<'_>, Account), DirectoryError> {
        let mut conn = self.connect().await?;
        let account = match conn.resolve(target, &self.config.base_dn).await {
            // A pooled connection the DC closed while idle: reconnect once.
            Err(e) if e.retryable => {
                conn.retired = true;
                conn.conn = self.open().await?;
                conn.retired = false;
                let resolved = conn.resolve(target, &self.config.base_dn).await;
                conn.settle(resolved)?
            }
            other => other?,
        };
        let scope = rules::check_scope(&mut conn, &self.config, &account).await;
        conn.settle(scope)?;
        let protected = {
            // Held while reading, so that concurrent jobs wait for one refresh instead of each doing it.
            let mut cached = self.protected_groups.lock().await;
            match cached.as_ref().filter(|groups| groups.read_at.elapsed() < rules::PROTECTED_GROUPS_TTL) {
                Some(groups) => Arc::clone(groups),
                None => {
                    let groups = rules::protected_groups(&mut conn, &self.config.base_dn).await;
                    let groups = Arc::new(conn.settle(groups)?);
                    *cached = Some(Arc::clone(&groups));
                    groups
                }
            }
        };
        let protection = rules::check_protection(&mut conn, &self.config, &protected, &account).await;
        conn.settle(protection)?;
        Ok((conn, account))
    }

    /// Resolves and admits the target for a password write and reads its effective policy.
    pub async fn prepare_write(
        &self,
        target: &AccountTarget,
        must_change: bool,
    ) -> Result<PreparedWrite<'_>, DirectoryError> {
        let (mut conn, account) = self.admit(target).await?;
        let notes = rules::check_state(&account, must_change)?;
        let policy = self.effective_policy(&mut conn, &account).await;
        let policy = conn.settle(policy)?;
        Ok(PreparedWrite { conn, account, policy, notes })
    }

    /// Writes the password to a prepared account; see [`WriteOptions`]. The account is read back
    /// afterwards, and with `verify_bind` configured the new password is tried with a bind.
    pub async fn write(
        &self,
        prepared: PreparedWrite<'_>,
        password: &SecretString,
        options: WriteOptions,
        gate: &dyn WriteGate,
    ) -> Result<Applied, DirectoryError> {
        let PreparedWrite { mut conn, account, notes, .. } = prepared;
        let read = match self.change(&mut conn, &account.dn, &Change::Password { password, options }, gate).await {
            Ok(()) => {
                let after = conn.read_back(&account).await;
                // Written but not read back: as good as a lost answer from here on.
                conn.settle(after)
                    .map(|after| (after, conn.url.clone()))
                    .map_err(|e| DirectoryError { maybe_applied: true, ..e })
            }
            Err(e) => Err(e),
        };
        // Back to the pool before the optional bind as the account, which uses a connection of its own.
        drop(conn);
        let (after, url) = match read {
            Ok(read) => read,
            Err(lost) if lost.maybe_applied => self.settle_lost_answer(&account, password, options, gate, lost).await?,
            Err(e) => return Err(e),
        };
        let mut verified = if options.must_change { after.pwd_last_set == 0 } else { after.pwd_last_set > 0 };
        if options.unlock {
            verified &= !after.locked_out();
        }
        if verified && self.config.verify_bind && !options.must_change && !after.disabled() {
            verified = self.check_password(&after.dn, password).await? == PasswordCheck::Matches;
        }
        Ok(Applied { account: after, dc_url: url, verified, password_matches: false, notes })
    }

    /// Finds out whether a password write whose answer was lost (a timeout, a closed connection,
    /// a failed read-back) was applied, by reading the account again on a fresh connection, for
    /// as long as `gate` still holds the job and at most [`LOST_ANSWER_PATIENCE`]. Returns the
    /// account as read afterwards and the DC that answered when the write was applied; a
    /// not-started failure when it was not (trying again is safe); otherwise `lost`, said to be
    /// unresolved. Never reports a write that may have landed as one that did not.
    async fn settle_lost_answer(
        &self,
        before: &Account,
        password: &SecretString,
        options: WriteOptions,
        gate: &dyn WriteGate,
        lost: DirectoryError,
    ) -> Result<(Account, String), DirectoryError> {
        tracing::warn!(account = %before.dn, error = %lost.message, "the answer to a password write was lost; reading the account to find out whether it was applied");
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(250);
        loop {
            let unreadable = match self.landed(before, password, options).await {
                Ok(Some(landed)) => {
                    tracing::info!(account = %before.dn, dc = %landed.1, "the write whose answer was lost was applied");
                    return Ok(landed);
                }
                Ok(None) => {
                    tracing::info!(account = %before.dn, "the write whose answer was lost was not applied");
                    return Err(DirectoryError {
                        retryable: true,
                        ..DirectoryError::new(
                            FailureCode::NotStarted,
                            format!(
                                "{}; the account shows the DC did not apply it, so trying again is safe",
                                lost.message
                            ),
                        )
                    });
                }
                Err(e) if e.retryable => e.message,
                Err(e) => return Err(DirectoryError { maybe_applied: true, ..e }),
            };
            if !gate.held() || started.elapsed() >= LOST_ANSWER_PATIENCE {
                return Err(DirectoryError {
                    message: format!(
                        "{}; whether the DC applied it is unknown: the account could not be read again within {} s \
                         ({unreadable})",
                        lost.message,
                        started.elapsed().as_secs()
                    ),
                    ..lost
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(5));
        }
    }

    /// Reads `before`'s account again: the account and the DC that answered when a password write
    /// changed it since `before` was read. `pwdLastSet` tells, except for a must-change write to an
    /// account whose `pwdLastSet` was already 0: then a bind with `password` does.
    async fn landed(
        &self,
        before: &Account,
        password: &SecretString,
        options: WriteOptions,
    ) -> Result<Option<(Account, String)>, DirectoryError> {
        let mut conn = self.connect().await?;
        let after = conn.read_back(before).await;
        let after = conn.settle(after)?;
        let url = conn.url.clone();
        drop(conn);
        let applied = match (options.must_change, before.pwd_last_set) {
            (false, _) => after.pwd_last_set != before.pwd_last_set,
            (true, 0) => match self.check_password(&after.dn, password).await? {
                PasswordCheck::Matches => true,
                PasswordCheck::Wrong => false,
                // An applied write with unlock would have cleared the lockout.
                PasswordCheck::LockedOut if options.unlock => false,
                PasswordCheck::LockedOut => {
                    return Err(DirectoryError::new(
                        FailureCode::VerificationFailed,
                        format!(
                            "{} is locked out, so a bind cannot tell whether the new password was applied; unlock \
                             the account and send the job again",
                            after.dn
                        ),
                    ));
                }
            },
            (true, _) => after.pwd_last_set == 0,
        };
        Ok(applied.then_some((after, url)))
    }

    /// [`Self::prepare_write`] then [`Self::write`], without a password pre-check.
    pub async fn set_password(
        &self,
        target: &AccountTarget,
        password: &SecretString,
        options: WriteOptions,
    ) -> Result<Applied, DirectoryError> {
        let prepared = self.prepare_write(target, options.must_change).await?;
        self.write(prepared, password, options, &Unleased).await
    }

    /// The account's effective password policy: its resultant PSO when the service account can
    /// read the PSO's settings (they are admin-only by default), otherwise the domain's. The DC
    /// enforces the real one in any case; this is the pre-check's view.
    async fn effective_policy(&self, conn: &mut Connection, account: &Account) -> Result<Policy, DirectoryError> {
        if let Some(pso) = &account.resultant_pso {
            match self.policy_at(conn, pso, true).await {
                Ok(policy) => return Ok(policy),
                Err(e) if !e.retryable => {
                    tracing::debug!(pso = %pso, error = %e.message, "PSO settings unreadable; pre-checking against the domain policy");
                }
                Err(e) => return Err(e),
            }
        }
        let base_dn = self.config.base_dn.clone();
        self.policy_at(conn, &base_dn, false).await
    }

    async fn policy_at(&self, conn: &mut Connection, dn: &str, pso: bool) -> Result<Policy, DirectoryError> {
        let key = dn.to_ascii_lowercase();
        {
            let cache = self.policies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((read_at, policy)) = cache.get(&key) {
                if read_at.elapsed() < POLICY_TTL {
                    return Ok(policy.clone());
                }
            }
        }
        let attributes: &[&str] = if pso {
            &pwrelay_shared::policy::PASSWORD_SETTINGS_ATTRIBUTES
        } else {
            &pwrelay_shared::policy::DOMAIN_HEAD_ATTRIBUTES
        };
        let values = conn.attributes(dn, attributes).await?;
        let lookup = |name: &str| values.get(name).map(String::as_str);
        let policy = if pso { Policy::from_password_settings(lookup) } else { Policy::from_domain_head(lookup) }
            .map_err(|e| DirectoryError::new(FailureCode::DirectoryError, format!("password policy at {dn}: {e}")))?;
        let mut cache = self.policies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.insert(key, (std::time::Instant::now(), policy.clone()));
        Ok(policy)
    }

    /// Clears the target's lockout; changes no password.
    pub async fn unlock(&self, target: &AccountTarget, gate: &dyn WriteGate) -> Result<Applied, DirectoryError> {
        let (mut conn, account) = self.admit(target).await?;
        self.change(&mut conn, &account.dn, &Change::Unlock, gate).await?;
        let after = conn.read_back(&account).await;
        let after = conn.settle(after)?;
        let url = conn.url.clone();
        Ok(Applied {
            verified: !after.locked_out(),
            account: after,
            dc_url: url,
            password_matches: false,
            notes: Vec::new(),
        })
    }

    /// Checks whether `password` is the target's current password with a bind as the account.
    /// Changes nothing the agent controls, but a wrong password counts as a failed logon on the DC
    /// (badPwdCount), like any other.
    pub async fn verify(&self, target: &AccountTarget, password: &SecretString) -> Result<Applied, DirectoryError> {
        let (conn, account) = self.admit(target).await?;
        let url = conn.url.clone();
        drop(conn);
        let check = self.check_password(&account.dn, password).await?;
        if check == PasswordCheck::LockedOut {
            return Err(DirectoryError::new(
                FailureCode::AccountStateConflict,
                format!("{} is locked out, so the DC does not check passwords for it; unlock it first", account.dn),
            ));
        }
        let mut notes = Vec::new();
        if check == PasswordCheck::Matches && account.must_change_password() {
            notes.push("the password matches, and the user must change it at next logon".to_owned());
        }
        Ok(Applied { password_matches: check == PasswordCheck::Matches, verified: true, account, dc_url: url, notes })
    }

    /// Binds as `dn` with `password` and classifies the answer by AD's `data` sub-code.
    pub async fn check_password(&self, dn: &str, password: &SecretString) -> Result<PasswordCheck, DirectoryError> {
        if password.is_empty() {
            // An empty password would be an anonymous bind, which proves nothing.
            return Ok(PasswordCheck::Wrong);
        }
        match self.bind(Login::Simple { dn, password: password.expose_secret() }, "password check").await? {
            Ok(mut conn) => {
                let _ = conn.ldap.unbind().await;
                Ok(PasswordCheck::Matches)
            }
            Err(BindRefusal { result, .. }) if result.rc == 49 => Ok(classify_bind(&result.text)),
            Err(BindRefusal { result, .. }) => {
                Err(DirectoryError::from_result("password check bind", result.rc, &result.text))
            }
        }
    }
}

/// Why a Kerberos bind did not get an LDAP answer.
enum KerberosFailure {
    /// A transport or protocol failure on this DC: the next one may work.
    #[cfg_attr(not(feature = "kerberos"), allow(dead_code))]
    Bind(ldap3::LdapError),
    /// The local Kerberos side failed (no credentials, no KDC, unknown service principal): the
    /// same for every DC, so the search ends.
    Credentials(DirectoryError),
}

/// SASL GSSAPI bind for the service principal `ldap/<host of dc>`, with the process's default
/// Kerberos credentials. The connection is already TLS: ldap3 then asks for no SASL security layer
/// and sends the tls-server-end-point channel binding. The GSSAPI library may block this thread
/// briefly while it reads the ticket cache or asks the KDC; that happens only when the pooled
/// connection is (re)opened and in health checks.
#[cfg(feature = "kerberos")]
async fn kerberos_bind(
    ldap: &mut ldap3::Ldap,
    dc: &crate::config::DcUrl,
) -> Result<ldap3::LdapResult, KerberosFailure> {
    match ldap.sasl_gssapi_bind(dc.host()).await {
        Ok(result) => Ok(result),
        Err(ldap3::LdapError::GssapiOperationError(text)) => {
            Err(KerberosFailure::Credentials(kerberos_error(&dc.url, dc.host(), &text)))
        }
        Err(e) => Err(KerberosFailure::Bind(e)),
    }
}

/// Without the `kerberos` feature: configuration refuses `bind = "kerberos"`; a directory built
/// by hand with it fails here.
#[cfg(not(feature = "kerberos"))]
async fn kerberos_bind(_: &mut ldap3::Ldap, _: &crate::config::DcUrl) -> Result<ldap3::LdapResult, KerberosFailure> {
    Err(KerberosFailure::Credentials(DirectoryError::new(
        FailureCode::DirectoryError,
        "bind = \"kerberos\" needs an agent built with Kerberos support (cargo build --features kerberos)",
    )))
}

/// Classifies a failure of the GSSAPI library: the KDC out of reach is retryable; anything else
/// (no credentials, expired ones, an unknown service principal) needs an operator.
#[cfg_attr(not(feature = "kerberos"), allow(dead_code))]
fn kerberos_error(url: &str, host: &str, text: &str) -> DirectoryError {
    // MIT krb5 (KRB5_KDC_UNREACH) and Windows SSPI (SEC_E_NO_AUTHENTICATING_AUTHORITY).
    let kdc_unreachable = ["cannot contact any kdc", "no authority could be contacted"]
        .iter()
        .any(|needle| text.to_ascii_lowercase().contains(needle));
    if kdc_unreachable {
        return DirectoryError::unavailable(format!("service account kerberos bind to {url}: {text}"));
    }
    DirectoryError::new(
        FailureCode::AccessDenied,
        format!(
            "service account kerberos bind to {url} failed: {text}; the agent needs Kerberos credentials for the \
             service account (Windows: run the service as the gMSA; Linux: KRB5_CLIENT_KTNAME naming its keytab \
             or KRB5CCNAME a ticket cache) and the DC needs the service principal ldap/{host}"
        ),
    )
}

/// Classifies an invalidCredentials bind by AD's `data` sub-code: 773 (must change), 532
/// (expired), 533 (disabled) and 701 (account expired) are reported only for a correct password.
fn classify_bind(text: &str) -> PasswordCheck {
    let data =
        text.split("data ").nth(1).map(|rest| rest.split([',', ' ']).next().unwrap_or_default().to_ascii_lowercase());
    match data.as_deref() {
        Some("773" | "532" | "533" | "701") => PasswordCheck::Matches,
        Some("775") => PasswordCheck::LockedOut,
        _ => PasswordCheck::Wrong,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_sub_codes_are_classified() {
        let text = |data: &str| {
            format!("80090308: LdapErr: DSID-0C09041C, comment: AcceptSecurityContext error, data {data}, v4563")
        };
        assert_eq!(classify_bind(&text("52e")), PasswordCheck::Wrong);
        assert_eq!(classify_bind(&text("773")), PasswordCheck::Matches);
        assert_eq!(classify_bind(&text("775")), PasswordCheck::LockedOut);
        assert_eq!(classify_bind("invalid credentials"), PasswordCheck::Wrong);
    }

    #[test]
    fn kerberos_errors_say_what_is_missing() {
        let none = kerberos_error(
            "ldaps://dc1.corp.example.com",
            "dc1.corp.example.com",
            "gss_init_sec_context: No Kerberos credentials available (default cache: FILE:/tmp/krb5cc_0)",
        );
        assert_eq!(none.code, FailureCode::AccessDenied);
        assert!(!none.retryable);
        assert!(none.message.contains("KRB5_CLIENT_KTNAME") && none.message.contains("ldap/dc1.corp.example.com"));
        let kdc = kerberos_error("ldaps://dc1", "dc1", "Cannot contact any KDC for realm 'CORP.EXAMPLE.COM'");
        assert_eq!(kdc.code, FailureCode::DirectoryUnavailable);
        assert!(kdc.retryable);
    }
}
