//! Directory errors and their classification.
//!
//! AD puts the reason in the diagnostic message, led by a Win32 error code in hex
//! (`0000052D: Constraint violation - ...`). The class is decided by that code first and by the
//! LDAP result code only when there is none.

use pwrelay_proto::agent::v1::{FailureCode, JobFailure};

/// LDAP result codes used in classification (RFC 4511).
mod rc {
    pub(super) const CONSTRAINT_VIOLATION: u32 = 19;
    pub(super) const NO_SUCH_OBJECT: u32 = 32;
    pub(super) const INVALID_CREDENTIALS: u32 = 49;
    pub(super) const INSUFFICIENT_ACCESS: u32 = 50;
    pub(super) const BUSY: u32 = 51;
    pub(super) const UNAVAILABLE: u32 = 52;
    pub(super) const UNWILLING_TO_PERFORM: u32 = 53;
}

/// A failed directory operation, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryError {
    /// The class.
    pub code: FailureCode,
    /// What happened, with the DC's text. Never holds a secret.
    pub message: String,
    /// The leading hex code of the DC's diagnostic.
    pub directory_code: Option<String>,
    /// The LDAP result code (0 when the failure is not an LDAP result).
    pub ldap_result_code: u32,
    /// Whether trying later may work.
    pub retryable: bool,
    /// Whether a write was sent and its answer lost (a timeout, a closed connection): the DC may
    /// have applied it. Always false for reads and for refusals the DC answered.
    pub maybe_applied: bool,
}

impl std::fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl DirectoryError {
    /// A failure decided by the agent itself (no DC reply).
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            directory_code: None,
            ldap_result_code: 0,
            retryable: false,
            maybe_applied: false,
        }
    }

    /// No DC could be reached: retryable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { retryable: true, ..Self::new(FailureCode::DirectoryUnavailable, message) }
    }

    /// Classifies an LDAP result (`rc`, diagnostic `text`) of the operation described by `action`.
    pub fn from_result(action: &str, rc: u32, text: &str) -> Self {
        let text = text.trim_end_matches('\0').trim();
        let directory_code = leading_hex_code(text);
        let (code, hint) = match (directory_code.as_deref(), rc) {
            (Some("0000052D"), _) => (FailureCode::PolicyViolation, None),
            (Some("00000005"), _) | (_, rc::INSUFFICIENT_ACCESS) => (
                FailureCode::AccessDenied,
                Some(
                    "the agent's service account lacks the right; delegate Reset Password and write access to \
                     pwdLastSet and lockoutTime on the account's OU with deploy/ad/Grant-PwRelayRights.ps1 \
                     (deploy/ad/grant-rights-samba.sh on Samba)",
                ),
            ),
            (Some("00002077" | "0000001F"), _) => {
                (FailureCode::DirectoryError, Some("the DC requires a secured connection for password writes"))
            }
            (Some("0000216C"), _) => {
                (FailureCode::DirectoryError, Some("the DC did not accept the unicodePwd encoding"))
            }
            (_, rc::NO_SUCH_OBJECT) => (FailureCode::AccountNotFound, None),
            (_, rc::CONSTRAINT_VIOLATION) => (FailureCode::PolicyViolation, None),
            (_, rc::INVALID_CREDENTIALS) => (
                FailureCode::AccessDenied,
                Some("the agent's service account cannot bind; check bind_dn and its password"),
            ),
            (_, rc::BUSY | rc::UNAVAILABLE) => (FailureCode::DirectoryUnavailable, None),
            (_, rc::UNWILLING_TO_PERFORM) => (FailureCode::DirectoryError, None),
            _ => (FailureCode::DirectoryError, None),
        };
        let mut message = format!("{action} failed: {text} (LDAP result {rc})");
        if text.is_empty() {
            message = format!("{action} failed with LDAP result {rc}");
        }
        if let Some(hint) = hint {
            message.push_str("; ");
            message.push_str(hint);
        }
        Self {
            code,
            message,
            directory_code,
            ldap_result_code: rc,
            retryable: code == FailureCode::DirectoryUnavailable,
            maybe_applied: false,
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> JobFailure {
        JobFailure {
            code: self.code as i32,
            message: self.message.clone(),
            directory_code: self.directory_code.clone().unwrap_or_default(),
            ldap_result_code: self.ldap_result_code,
            retryable: self.retryable,
        }
    }
}

/// The 8-hex-digit code that leads an AD diagnostic message (`0000052D: ...`).
fn leading_hex_code(text: &str) -> Option<String> {
    let code = text.get(..8)?;
    let followed_by_colon = text[8..].starts_with(':');
    (followed_by_colon && code.bytes().all(|b| b.is_ascii_hexdigit())).then(|| code.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_the_leading_hex_code_first() {
        let too_short = "0000052D: Constraint violation - check_password_restrictions: the password is too short. It should be equal or longer than 7 characters!";
        let e = DirectoryError::from_result("password reset", 19, too_short);
        assert_eq!(e.code, FailureCode::PolicyViolation);
        assert_eq!(e.directory_code.as_deref(), Some("0000052D"));
        assert!(e.message.contains("too short"));
        assert!(!e.retryable);
        // AD reports some policy failures under result 53 (unwillingToPerform): the hex code decides.
        assert_eq!(
            DirectoryError::from_result("x", 53, "0000052D: SvcErr: DSID-031A12D2").code,
            FailureCode::PolicyViolation
        );
        let denied = DirectoryError::from_result(
            "x",
            50,
            "00000005: SecErr: DSID-03152857, problem 4003 (INSUFF_ACCESS_RIGHTS)",
        );
        assert_eq!(denied.code, FailureCode::AccessDenied);
        assert!(denied.message.contains("Reset Password"));
        assert_eq!(DirectoryError::from_result("x", 32, "0000208D: NameErr").code, FailureCode::AccountNotFound);
        assert_eq!(DirectoryError::from_result("x", 53, "00002077: SvcErr").code, FailureCode::DirectoryError);
        let busy = DirectoryError::from_result("x", 51, "");
        assert_eq!(busy.code, FailureCode::DirectoryUnavailable);
        assert!(busy.retryable);
    }

    #[test]
    fn only_a_hex_code_followed_by_a_colon_counts() {
        assert_eq!(leading_hex_code("0000052d: x"), Some("0000052D".into()));
        assert_eq!(leading_hex_code("0000052D x"), None);
        assert_eq!(leading_hex_code("password: x"), None);
        assert_eq!(leading_hex_code("ü"), None);
    }
}
