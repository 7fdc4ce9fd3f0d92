//! The agent's own check of a caller-supplied password before it is written: the AD policy as
//! MS-SAMR defines it (including the account-name and display-name rules Samba does not enforce)
//! and the banned-password evaluation in the configured mode.

use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::password::{
    EnforcementMode, Evaluator, EvaluatorConfig, EventIds, GenerateOptions, GlobalList, Operation, UserContext,
    Verdict, generate,
};
use pwrelay_shared::policy::Policy;
use pwrelay_shared::secret::SecretString;

use crate::config::{BannedMode, PasswordCheckConfig};
use crate::directory::{Account, DirectoryError};

/// What the pre-check decided, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckOutcome {
    /// Password Protection event ids of the banned-password evaluation (when it ran).
    pub events: Option<EventIds>,
    /// Remarks for the requester (audit-mode failures).
    pub notes: Vec<String>,
}

/// One domain's pre-check.
#[derive(Debug)]
pub struct PasswordPrecheck {
    evaluator: Option<Evaluator>,
    /// Generated passwords always pass the banned-password evaluation, whatever the mode.
    generation: Evaluator,
}

impl PasswordPrecheck {
    /// Builds the evaluator from the configuration (the built-in global list plus the custom one).
    pub fn new(config: &PasswordCheckConfig) -> Self {
        let mode = match config.banned {
            BannedMode::Enforce => Some(EnforcementMode::Enforce),
            BannedMode::Audit => Some(EnforcementMode::Audit),
            BannedMode::Off => None,
        };
        let evaluator_in = |mode| {
            Evaluator::new(EvaluatorConfig {
                custom_list: config.custom_list.clone(),
                global_list: GlobalList::builtin(),
                mode,
                tenant_name: config.organization_name.clone(),
            })
        };
        Self { evaluator: mode.map(evaluator_in), generation: evaluator_in(EnforcementMode::Enforce) }
    }

    /// Generates a password for `account` that meets `policy` and passes the banned-password
    /// evaluation in enforce mode.
    pub fn generate(
        &self,
        policy: &Policy,
        account: &Account,
        options: &GenerateOptions,
    ) -> Result<SecretString, DirectoryError> {
        generate(policy, options, &self.generation, &user_context(account))
            .map_err(|e| DirectoryError::new(FailureCode::InvalidJob, format!("no password could be generated: {e}")))
    }

    /// Checks `password` for `account` under `policy`. A refusal carries the reasons and, for the
    /// banned-password evaluation, its event ids.
    pub fn check(
        &self,
        policy: &Policy,
        account: &Account,
        password: &SecretString,
    ) -> Result<CheckOutcome, (DirectoryError, Option<EventIds>)> {
        let user = user_context(account);
        let failures = policy.check(password, &user.account_names());
        if !failures.is_empty() {
            let reasons: Vec<String> = failures.iter().map(ToString::to_string).collect();
            let source = match policy.source {
                pwrelay_shared::policy::PolicySource::PasswordSettings => "the account's fine-grained password policy",
                _ => "the domain password policy",
            };
            return Err((
                DirectoryError::new(
                    FailureCode::PolicyViolation,
                    format!("the password does not meet {source}: it {}; nothing was changed", reasons.join(", it ")),
                ),
                None,
            ));
        }
        let Some(evaluator) = &self.evaluator else { return Ok(CheckOutcome::default()) };
        let evaluation = evaluator.evaluate(password, &user, Operation::Set);
        let reason = evaluation.rejection.map(|r| r.to_string()).unwrap_or_default();
        match evaluation.verdict {
            Verdict::Accepted => Ok(CheckOutcome { events: Some(evaluation.events), notes: Vec::new() }),
            Verdict::AcceptedInAuditMode => Ok(CheckOutcome {
                events: Some(evaluation.events),
                notes: vec![format!("the banned-password check (audit mode) would have refused it: it {reason}")],
            }),
            Verdict::Rejected => Err((
                DirectoryError::new(
                    FailureCode::PasswordRejected,
                    format!("the password is refused by the banned-password check: it {reason}; nothing was changed"),
                ),
                Some(evaluation.events),
            )),
        }
    }
}

fn user_context(account: &Account) -> UserContext {
    UserContext {
        sam_account_name: account.sam_account_name.clone(),
        display_name: account.display_name.clone().unwrap_or_default(),
        first_name: account.given_name.clone().unwrap_or_default(),
        last_name: account.surname.clone().unwrap_or_default(),
    }
}
