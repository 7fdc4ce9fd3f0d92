//! The service account's password as the agent binds with it (`bind = "simple"`), and what the
//! DCs said about it.
//!
//! A simple bind with a wrong password counts as a failed logon on the DC (`badPwdCount`) and,
//! past the domain's lockout threshold, locks the service account out. So once a DC refuses the
//! password (LDAP result 49 with AD's `data 52e` or another sub-code a wrong password gives, or
//! `775`, locked out), no connection binds with it again, neither the health check nor a job's,
//! until `bind_password_file` holds a different password (re-read on every attempt meanwhile and
//! compared by its SHA-256, in memory only) or the back-off has passed: `refused_bind_retry_seconds`,
//! doubled after every further refusal of the same password up to `refused_bind_retry_max_seconds`.
//! Then one bind tries again.
//!
//! Binds with a password no DC has accepted yet go one at a time, so a burst of jobs at start-up
//! with a wrong password costs one failed logon, not one per connection.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use pwrelay_shared::secret::SecretString;
use tokio::time::Instant;

/// Why the password file could not be read again.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file cannot be read.
    #[error("bind_password_file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is empty (perhaps being rewritten).
    #[error("bind_password_file {path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// A refused service-account password, as health reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRefusal {
    /// The DC that refused it.
    pub dc: String,
    /// The DC's answer (diagnostic text and LDAP result code; never the password).
    pub answer: String,
    /// When one bind with the same password is tried again.
    pub retry_at: Instant,
    /// Where a new password comes from: `bind_password_file`, or `bind_password_env` (read at
    /// start only).
    pub source_key: &'static str,
}

impl CredentialRefusal {
    /// Whole seconds from `now` until the next try.
    pub fn retry_in_seconds(&self, now: Instant) -> u64 {
        self.retry_at.saturating_duration_since(now).as_secs()
    }

    /// What `/readyz` and the refused jobs say.
    pub fn message(&self, now: Instant) -> String {
        let until = match self.source_key {
            "bind_password_file" => "bind_password_file changes",
            _ => "bind_password_env changes and the agent restarts",
        };
        format!(
            "the service account's credentials were refused by {}; not retrying until {until} (or in {} s)",
            self.dc,
            self.retry_in_seconds(now)
        )
    }
}

/// SHA-256 of a password: what is compared, so the refused password itself is not kept.
type Digest = [u8; 32];

fn digest(password: &SecretString) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, password.expose_secret().as_bytes()).as_ref());
    out
}

/// The last refusal of one password.
#[derive(Debug, Clone)]
struct Refusal {
    digest: Digest,
    wait: Duration,
    public: CredentialRefusal,
}

struct State {
    password: SecretString,
    digest: Digest,
    /// A DC accepted `password`.
    proven: bool,
    refusal: Option<Refusal>,
}

/// The service account's password with its refusal state. Shared by every bind of one domain.
pub(crate) struct ServiceCredential {
    file: Option<PathBuf>,
    retry: Duration,
    retry_max: Duration,
    state: Mutex<State>,
    /// Held by a bind whose password no DC has accepted yet.
    probe: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ServiceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCredential").field("file", &self.file).finish_non_exhaustive()
    }
}

/// Leave to bind once with the current password; report the DC's answer with
/// [`Attempt::accepted`] or [`Attempt::refused`] (dropping it reports nothing, e.g. when no DC
/// answered).
pub(crate) struct Attempt<'a> {
    credential: &'a ServiceCredential,
    password: SecretString,
    digest: Digest,
    _probe: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Attempt<'_> {
    /// The password to bind with.
    pub(crate) fn password(&self) -> &str {
        self.password.expose_secret()
    }

    /// A DC took the bind.
    pub(crate) fn accepted(self) {
        let mut state = self.credential.lock();
        if state.digest == self.digest {
            state.proven = true;
        }
        if state.refusal.as_ref().is_some_and(|r| r.digest == self.digest) {
            state.refusal = None;
            tracing::info!("the service account's credentials were accepted again; binding as usual");
        }
    }

    /// `dc` refused the bind with `answer`: the password is not used again until it changes or
    /// the back-off passes.
    pub(crate) fn refused(self, dc: &str, answer: &str) -> CredentialRefusal {
        let credential = self.credential;
        let mut state = credential.lock();
        let wait = match &state.refusal {
            Some(last) if last.digest == self.digest => last.wait.saturating_mul(2).min(credential.retry_max),
            _ => credential.retry,
        };
        let now = Instant::now();
        let public = CredentialRefusal {
            dc: dc.to_owned(),
            answer: answer.to_owned(),
            // A far-off deadline that does not fit the clock: try again in a year at the latest.
            retry_at: now.checked_add(wait).unwrap_or_else(|| now + Duration::from_secs(365 * 86_400)),
            source_key: credential.source_key(),
        };
        if state.digest == self.digest {
            state.proven = false;
        }
        state.refusal = Some(Refusal { digest: self.digest, wait, public: public.clone() });
        tracing::error!(
            dc,
            answer,
            retry_in_seconds = wait.as_secs(),
            source = public.source_key,
            "the DC refused the service account's credentials; not binding with them again until they change \
             (or the back-off passes), so the account is not locked out"
        );
        public
    }
}

impl ServiceCredential {
    /// `password` as configured; `file` is where it was read from (re-read after a refusal).
    pub(crate) fn new(password: SecretString, file: Option<PathBuf>, retry: Duration, retry_max: Duration) -> Self {
        let state = State { digest: digest(&password), password, proven: false, refusal: None };
        Self {
            file,
            retry: retry.max(Duration::from_secs(1)),
            retry_max: retry_max.max(retry),
            state: Mutex::new(state),
            probe: tokio::sync::Mutex::new(()),
        }
    }

    fn source_key(&self) -> &'static str {
        if self.file.is_some() { "bind_password_file" } else { "bind_password_env" }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a few field assignments: a panicked holder leaves the state usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current refusal, if the password is not being used.
    pub(crate) fn refusal(&self) -> Option<CredentialRefusal> {
        self.lock().refusal.as_ref().map(|r| r.public.clone())
    }

    /// Leave to bind now, or the refusal that forbids it.
    pub(crate) async fn attempt(&self) -> Result<Attempt<'_>, CredentialRefusal> {
        let (password, digest, proven) = self.check()?;
        if proven {
            return Ok(Attempt { credential: self, password, digest, _probe: None });
        }
        let probe = self.probe.lock().await;
        // Another bind may have settled the question meanwhile.
        let (password, digest, proven) = self.check()?;
        Ok(Attempt { credential: self, password, digest, _probe: (!proven).then_some(probe) })
    }

    /// The password to bind with, unless it was refused and neither changed nor waited out.
    fn check(&self) -> Result<(SecretString, Digest, bool), CredentialRefusal> {
        let mut state = self.lock();
        let Some(refusal) = state.refusal.clone() else {
            return Ok((state.password.clone(), state.digest, state.proven));
        };
        if let Some(file) = &self.file {
            match read_password(file) {
                Ok(password) => {
                    let new = digest(&password);
                    if new != refusal.digest {
                        tracing::info!(file = %file.display(), "bind_password_file changed; binding with the new password");
                        *state = State { password, digest: new, proven: false, refusal: None };
                        return Ok((state.password.clone(), state.digest, false));
                    }
                }
                Err(error) => tracing::warn!(%error, "re-reading the service account's password failed"),
            }
        }
        if Instant::now() < refusal.public.retry_at {
            return Err(refusal.public);
        }
        Ok((state.password.clone(), state.digest, state.proven))
    }
}

/// The password in `file`, its line ending trimmed (as configuration reads it).
fn read_password(file: &Path) -> Result<SecretString, CredentialError> {
    let text = SecretString::new(
        std::fs::read_to_string(file).map_err(|source| CredentialError::Read { path: file.to_owned(), source })?,
    );
    let password = SecretString::from(text.expose_secret().trim_end_matches(['\r', '\n']));
    if password.is_empty() {
        return Err(CredentialError::Empty { path: file.to_owned() });
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_secs(900);
    const RETRY_MAX: Duration = Duration::from_secs(3600);

    fn from_file(dir: &Path, password: &str) -> (ServiceCredential, PathBuf) {
        let file = dir.join("bind.secret");
        std::fs::write(&file, format!("{password}\n")).expect("write");
        (ServiceCredential::new(SecretString::from(password), Some(file.clone()), RETRY, RETRY_MAX), file)
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_password_waits_for_a_new_file_or_the_back_off() {
        let dir = tempfile::tempdir().expect("dir");
        let (credential, file) = from_file(dir.path(), "Wrong!pass1");
        let attempt = credential.attempt().await.expect("the first bind may try");
        assert_eq!(attempt.password(), "Wrong!pass1");
        attempt.refused("ldaps://dc1", "data 52e");

        let refusal = credential.attempt().await.err().expect("refused until something changes");
        assert_eq!(
            refusal.message(Instant::now()),
            "the service account's credentials were refused by ldaps://dc1; not retrying until \
             bind_password_file changes (or in 900 s)"
        );
        // Rewriting the same password changes nothing.
        std::fs::write(&file, "Wrong!pass1\r\n").expect("write");
        tokio::time::advance(Duration::from_secs(899)).await;
        assert!(credential.attempt().await.is_err());

        // After the back-off one bind tries again; refused again, the wait doubles, then caps.
        tokio::time::advance(Duration::from_secs(1)).await;
        credential.attempt().await.expect("the back-off passed").refused("ldaps://dc1", "data 52e");
        assert_eq!(credential.refusal().expect("refused").retry_in_seconds(Instant::now()), 1800);
        tokio::time::advance(Duration::from_secs(1800)).await;
        credential.attempt().await.expect("the back-off passed").refused("ldaps://dc1", "data 52e");
        assert_eq!(credential.refusal().expect("refused").retry_in_seconds(Instant::now()), 3600);
        tokio::time::advance(Duration::from_secs(3600)).await;
        credential.attempt().await.expect("the back-off passed").refused("ldaps://dc1", "data 52e");
        assert_eq!(credential.refusal().expect("refused").retry_in_seconds(Instant::now()), 3600, "capped");

        // A new password in the file is tried at once, and its success clears the refusal.
        std::fs::write(&file, "Right!pass2\n").expect("write");
        let attempt = credential.attempt().await.expect("a changed password may try");
        assert_eq!(attempt.password(), "Right!pass2");
        attempt.accepted();
        assert_eq!(credential.refusal(), None);
        assert_eq!(credential.attempt().await.expect("accepted").password(), "Right!pass2");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unproven_password_binds_one_at_a_time() {
        let dir = tempfile::tempdir().expect("dir");
        let (credential, _) = from_file(dir.path(), "Wrong!pass1");
        let first = credential.attempt().await.expect("first");
        // A second bind waits for the first one's answer...
        let second = tokio::time::timeout(Duration::from_secs(5), credential.attempt()).await;
        assert!(second.is_err(), "a second unproven bind waits");
        // ...and a refusal then stops it without a second failed logon.
        let (refused, ()) =
            tokio::join!(credential.attempt(), async { drop(first.refused("ldaps://dc1", "data 52e")) });
        assert!(refused.is_err());

        // Once a DC accepted a password, binds with it run side by side.
        let (credential, _) = from_file(dir.path(), "Right!pass2");
        credential.attempt().await.expect("first").accepted();
        let _one = credential.attempt().await.expect("one");
        let _two = tokio::time::timeout(Duration::from_secs(1), credential.attempt()).await.expect("no wait");
    }

    #[tokio::test(start_paused = true)]
    async fn an_environment_password_says_it_needs_a_restart() {
        let credential = ServiceCredential::new(SecretString::from("Wrong!pass1"), None, RETRY, RETRY_MAX);
        credential.attempt().await.expect("first").refused("ldaps://dc1", "data 52e");
        let message = credential.attempt().await.err().expect("refused").message(Instant::now());
        assert!(message.contains("until bind_password_env changes and the agent restarts (or in 900 s)"), "{message}");
    }
}
