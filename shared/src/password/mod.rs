//! Password evaluation (banned terms, as Microsoft Entra Password Protection describes it),
//! breached-password lookup, and generation of policy-compliant passwords.
//!
//! - [`Evaluator`]: normalization, fuzzy banned-term matching against the global and custom lists,
//!   name checks, scoring, enforce/audit, and the Password Protection event ids.
//! - [`CustomList`], [`GlobalList`]: the banned-term lists.
//! - [`BreachChecker`]: the k-anonymity range lookup of breached-password hashes.
//! - [`generate`]: random, friendly and passphrase passwords that satisfy a [`Policy`] and pass
//!   the evaluator.
//!
//! [`Policy`]: crate::policy::Policy

mod banned;
mod breach;
mod evaluate;
mod generate;
mod matcher;
mod normalize;

pub use banned::{BannedListError, CUSTOM_LIST_MAX_TERMS, CustomList, GlobalList, TERM_MAX_CHARS, TERM_MIN_CHARS};
pub use breach::{BreachChecker, BreachConfig, BreachError, BreachOutcome, DEFAULT_BREACH_BASE_URL, FailureMode};
pub use evaluate::{
    BannedMatch, EnforcementMode, Evaluation, Evaluator, EvaluatorConfig, EventIds, Lists, NAME_MIN_CHARS, NameKind,
    Operation, PASSING_SCORE, Rejection, UserContext, Verdict,
};
pub use generate::{
    GenerateError, GenerateMode, GenerateOptions, MAX_GENERATION_ATTEMPTS, MAX_PASSPHRASE_WORDS, MIN_GENERATED_CHARS,
    MIN_PASSPHRASE_WORDS, generate,
};
