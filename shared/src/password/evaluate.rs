//! Banned-password evaluation as Microsoft Entra Password Protection describes it.
//!
//! 1. Normalize the password (see `normalize`).
//! 2. Reject it outright when it contains the user's first name, last name, account name or the
//!    organization (tenant) name: substring match on the normalized password, for names of at least
//!    four characters (each word of a name is checked, and the whole name without separators).
//! 3. Find the banned terms of the global and custom lists, exactly or within one edit (see
//!    `matcher`), and score: one point per banned term found, one point per remaining character.
//!    Five points or more pass.
//! 4. In audit mode a password that would fail passes, and the outcome says it would have failed.
//!
//! The outcome carries the event ids the Entra Password Protection DC agent logs for the same
//! outcome (Microsoft Learn, "Monitor and review logs for on-premises Microsoft Entra Password
//! Protection environments"), so audit trails read the same.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::banned::{CustomList, GlobalList};
use super::matcher::{TermIndex, select};
use super::normalize::{normalize, normalize_into};
use crate::policy::AccountNames;
use crate::secret::SecretString;

/// Fewest points a password needs to pass.
pub const PASSING_SCORE: u32 = 5;
/// Fewest characters a name needs before the password is searched for it.
pub const NAME_MIN_CHARS: usize = 4;

/// Whether a failing password is refused or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnforcementMode {
    /// A failing password is rejected.
    #[default]
    Enforce,
    /// A failing password is accepted; the outcome says it would have been rejected.
    Audit,
}

/// Whether the user changes their own password or an administrator (or pwrelay) sets it.
/// Only the event ids differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// The user changes their own password (knowing the old one).
    Change,
    /// The password is set (reset) by an administrator or a service.
    Set,
}

/// Settings of an [`Evaluator`].
#[derive(Debug, Clone)]
pub struct EvaluatorConfig {
    /// The organization's banned terms.
    pub custom_list: CustomList,
    /// The global banned terms (normally [`GlobalList::builtin`]).
    pub global_list: GlobalList,
    /// Enforce or audit.
    pub mode: EnforcementMode,
    /// The organization's name (Entra checks the tenant name); passwords containing it are rejected.
    pub tenant_name: Option<String>,
}

impl Default for EvaluatorConfig {
    fn default() -> Self {
        Self {
            custom_list: CustomList::default(),
            global_list: GlobalList::builtin(),
            mode: EnforcementMode::Enforce,
            tenant_name: None,
        }
    }
}

/// The person whose password is evaluated. Empty fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserContext {
    /// `sAMAccountName`.
    pub sam_account_name: String,
    /// `displayName` (used by the AD complexity rule, see [`UserContext::account_names`]).
    pub display_name: String,
    /// `givenName`.
    pub first_name: String,
    /// `sn`.
    pub last_name: String,
}

impl UserContext {
    /// The names the AD complexity rule looks at.
    pub fn account_names(&self) -> AccountNames<'_> {
        AccountNames { sam_account_name: &self.sam_account_name, display_name: &self.display_name }
    }
}

/// Which name a password contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// The user's first name.
    FirstName,
    /// The user's last name.
    LastName,
    /// The user's account name.
    AccountName,
    /// The organization (tenant) name.
    TenantName,
}

/// Which banned-term lists the counted terms came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lists {
    /// No banned term was found (the password is simply too short).
    Neither,
    /// Only terms of the custom list.
    Custom,
    /// Only terms of the global list.
    Global,
    /// Terms of both lists (or a term on both).
    Both,
}

/// Why a password fails the evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The password contains a name of the user or of the organization.
    #[error("contains the {}", name_text(*.0))]
    ContainsName(NameKind),
    /// The score is below [`PASSING_SCORE`].
    #[error(
        "is too easy to guess: it scores {score} points, at least 5 are needed (one point per banned term, one per other character)"
    )]
    TooWeak {
        /// The score.
        score: u32,
        /// Where the banned terms found came from.
        lists: Lists,
    },
}

fn name_text(kind: NameKind) -> &'static str {
    match kind {
        NameKind::FirstName => "user's first name",
        NameKind::LastName => "user's last name",
        NameKind::AccountName => "account name",
        NameKind::TenantName => "organization name",
    }
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password passes.
    Accepted,
    /// The password fails (enforce mode).
    Rejected,
    /// The password fails but audit mode lets it through.
    AcceptedInAuditMode,
}

/// A banned term found in the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BannedMatch {
    /// The banned term (normalized).
    pub term: Arc<str>,
    /// The list(s) the term is on.
    pub lists: Lists,
    /// Whether the password holds the term exactly (after normalization) rather than within one edit.
    pub exact: bool,
}

/// Event ids of the Entra Password Protection DC agent for an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventIds {
    /// The password filter event (10014 ... 10025).
    pub filter: u32,
    /// The policy validation event giving the reason (30002 ... 30029), for failures and audit passes.
    pub reason: Option<u32>,
}

/// The outcome of [`Evaluator::evaluate`]. Holds no part of the password, only banned terms it
/// contains; log the event ids and the score, not the terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The decision.
    pub verdict: Verdict,
    /// Banned terms plus remaining characters.
    pub score: u32,
    /// The banned terms counted, in password order.
    pub matches: Vec<BannedMatch>,
    /// Why the password fails, also in audit mode (where it is accepted anyway).
    pub rejection: Option<Rejection>,
    /// Event ids for the audit trail.
    pub events: EventIds,
}

impl Evaluation {
    /// Whether the password may be used (passes, or fails in audit mode).
    pub fn is_accepted(&self) -> bool {
        self.verdict != Verdict::Rejected
    }
}

/// Evaluates passwords against the banned-term lists. Build once, use from many threads.
#[derive(Debug)]
pub struct Evaluator {
    index: TermIndex,
    /// Lists of each term of `index`, by term index.
    term_lists: Vec<Lists>,
    terms: Vec<Arc<str>>,
    mode: EnforcementMode,
    tenant: Vec<Vec<char>>,
}

impl Evaluator {
    /// Compiles the lists. Costs a few milliseconds: build one and keep it.
    pub fn new(config: EvaluatorConfig) -> Self {
        let mut tagged: Vec<(String, Lists)> = config
            .custom_list
            .terms()
            .iter()
            .map(|t| (t.clone(), Lists::Custom))
            .chain(config.global_list.terms().iter().map(|t| (t.clone(), Lists::Global)))
            .collect();
        tagged.sort_by(|a, b| a.0.cmp(&b.0));
        let mut terms: Vec<String> = Vec::with_capacity(tagged.len());
        let mut term_lists: Vec<Lists> = Vec::with_capacity(tagged.len());
        for (term, lists) in tagged {
            if terms.last() == Some(&term) {
                if let Some(last) = term_lists.last_mut() {
                    *last = merge(*last, lists);
                }
            } else {
                terms.push(term);
                term_lists.push(lists);
            }
        }
        let index = TermIndex::build(&terms);
        let terms = terms.into_iter().map(Arc::from).collect();
        let tenant = config.tenant_name.as_deref().map(name_patterns).unwrap_or_default();
        Self { index, term_lists, terms, mode: config.mode, tenant }
    }

    /// Number of distinct banned terms (custom and global).
    pub fn term_count(&self) -> usize {
        self.index.len()
    }

    /// The enforcement mode.
    pub fn mode(&self) -> EnforcementMode {
        self.mode
    }

    /// Evaluates `password` for `user`.
    pub fn evaluate(&self, password: &SecretString, user: &UserContext, operation: Operation) -> Evaluation {
        let mut normalized = Zeroizing::new(Vec::new());
        normalize_into(password.expose_secret(), &mut normalized);
        let mut symbols = Zeroizing::new(Vec::new());
        self.index.symbols_into(&normalized, &mut symbols);
        let mut candidates = Vec::new();
        self.index.find(&symbols, &mut candidates);
        let selection = select(&candidates, normalized.len());
        candidates.clear();

        let score = selection.score;
        let matches: Vec<BannedMatch> = selection
            .matches
            .iter()
            .map(|c| BannedMatch {
                term: self.terms[c.term as usize].clone(),
                lists: self.term_lists[c.term as usize],
                exact: c.edits == 0,
            })
            .collect();
        let lists = matches.iter().fold(Lists::Neither, |acc, m| merge(acc, m.lists));

        let rejection = match self.contained_name(&normalized, user) {
            Some(kind) => Some(Rejection::ContainsName(kind)),
            None if score < PASSING_SCORE => Some(Rejection::TooWeak { score, lists }),
            None => None,
        };
        let verdict = match (rejection, self.mode) {
            (None, _) => Verdict::Accepted,
            (Some(_), EnforcementMode::Enforce) => Verdict::Rejected,
            (Some(_), EnforcementMode::Audit) => Verdict::AcceptedInAuditMode,
        };
        Evaluation { verdict, score, matches, rejection, events: event_ids(verdict, rejection, operation) }
    }

    fn contained_name(&self, password: &[char], user: &UserContext) -> Option<NameKind> {
        let fields = [
            (NameKind::FirstName, user.first_name.as_str()),
            (NameKind::LastName, user.last_name.as_str()),
            (NameKind::AccountName, user.sam_account_name.as_str()),
        ];
        let mut name = Vec::new();
        let mut joined = Vec::new();
        for (kind, text) in fields {
            if text.is_empty() {
                continue;
            }
            normalize_into(text, &mut name);
            joined.clear();
            joined.extend(name.iter().copied().filter(|&c| !is_name_separator(c)));
            let words = name.split(|&c| is_name_separator(c));
            if words.chain(std::iter::once(&joined[..])).any(|w| w.len() >= NAME_MIN_CHARS && contains(password, w)) {
                return Some(kind);
            }
        }
        self.tenant.iter().any(|p| contains(password, p)).then_some(NameKind::TenantName)
    }
}

fn merge(a: Lists, b: Lists) -> Lists {
    match (a, b) {
        (Lists::Neither, x) | (x, Lists::Neither) => x,
        (x, y) if x == y => x,
        _ => Lists::Both,
    }
}

fn is_name_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '.' | '-' | '_' | '#' | '\'')
}

/// The normalized forms of a name searched for: each word, and the whole name without separators,
/// when at least [`NAME_MIN_CHARS`] long.
fn name_patterns(name: &str) -> Vec<Vec<char>> {
    let normalized = normalize(name);
    let mut patterns: Vec<Vec<char>> = normalized
        .split(is_name_separator)
        .map(|word| word.chars().collect::<Vec<char>>())
        .filter(|word| word.len() >= NAME_MIN_CHARS)
        .collect();
    let joined: Vec<char> = normalized.chars().filter(|&c| !is_name_separator(c)).collect();
    if joined.len() >= NAME_MIN_CHARS && !patterns.contains(&joined) {
        patterns.push(joined);
    }
    patterns
}

fn contains(haystack: &[char], needle: &[char]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The DC agent's event ids (Microsoft Learn, "Monitor and review logs for on-premises Microsoft
/// Entra Password Protection environments", table "password validation outcome events").
///
/// Mapped exactly as published, including one irregular row: an audit-only pass that would have
/// failed because of the user name is logged with the *fail* filter events 10016 (change) /
/// 10017 (set), not 10024 / 10025. Two cases the table does not cover: a password too short to
/// score 5 without containing any banned term is logged as failing the Microsoft (global) policy,
/// and the organization name (Entra does not check the tenant name on domain controllers) is
/// logged like the user name.
fn event_ids(verdict: Verdict, rejection: Option<Rejection>, operation: Operation) -> EventIds {
    let change = operation == Operation::Change;
    let pick = |on_change: u32, on_set: u32| if change { on_change } else { on_set };
    let Some(rejection) = rejection else {
        return EventIds { filter: pick(10014, 10015), reason: None };
    };
    let audit = verdict == Verdict::AcceptedInAuditMode;
    let (filter, reason) = match (rejection, audit) {
        (Rejection::ContainsName(_), false) => (pick(10016, 10017), pick(30021, 30022)),
        (Rejection::ContainsName(_), true) => (pick(10016, 10017), pick(30024, 30023)),
        (Rejection::TooWeak { lists, .. }, false) => (
            pick(10016, 10017),
            match lists {
                Lists::Custom => pick(30002, 30003),
                Lists::Global | Lists::Neither => pick(30004, 30005),
                Lists::Both => pick(30026, 30027),
            },
        ),
        (Rejection::TooWeak { lists, .. }, true) => (
            pick(10024, 10025),
            match lists {
                Lists::Custom => pick(30008, 30007),
                Lists::Global | Lists::Neither => pick(30010, 30009),
                Lists::Both => pick(30028, 30029),
            },
        ),
    };
    EventIds { filter, reason: Some(reason) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 004's setting: "chance" and "security" banned, nothing else.
    fn seed_evaluator(mode: EnforcementMode) -> Evaluator {
        Evaluator::new(EvaluatorConfig {
            custom_list: CustomList::new(["chance", "security"]).unwrap(),
            global_list: GlobalList::dangerous_empty(),
            mode,
            tenant_name: None,
        })
    }

    fn eval(evaluator: &Evaluator, password: &str) -> Evaluation {
        evaluator.evaluate(&SecretString::from(password), &UserContext::default(), Operation::Set)
    }

    #[test]
    fn seed_worked_examples_score_exactly() {
        let e = seed_evaluator(EnforcementMode::Enforce);
        for (password, score, accepted) in [
            ("MyCh@nc3W!thK4thy", 11, true),
            ("S3b@C4nce2!", 7, true),
            ("Ch@nc30fS3cur!ty", 4, false),
            ("S3cur!ty$ecru!ty1!", 4, false),
        ] {
            let outcome = eval(&e, password);
            assert_eq!(outcome.score, score, "{password}: {outcome:?}");
            assert_eq!(outcome.is_accepted(), accepted, "{password}");
        }
    }

    #[test]
    fn seed_examples_report_the_terms_found() {
        let e = seed_evaluator(EnforcementMode::Enforce);
        let outcome = eval(&e, "S3cur!ty$ecru!ty1!");
        let found: Vec<(&str, bool)> = outcome.matches.iter().map(|m| (&*m.term, m.exact)).collect();
        assert_eq!(found, [("security", true), ("security", false)]);
        assert_eq!(outcome.rejection, Some(Rejection::TooWeak { score: 4, lists: Lists::Custom }));
        // "S3b@C4nce2!" holds "cance": chance with one deletion.
        let outcome = eval(&e, "S3b@C4nce2!");
        assert_eq!(outcome.matches.len(), 1);
        assert!(!outcome.matches[0].exact);
    }

    #[test]
    fn microsoft_documented_examples() {
        let e = Evaluator::new(EvaluatorConfig {
            custom_list: CustomList::new(["contoso"]).unwrap(),
            global_list: GlobalList::from_terms(["blank"]).unwrap(),
            mode: EnforcementMode::Enforce,
            tenant_name: None,
        });
        let outcome = eval(&e, "C0ntos0Blank12");
        assert_eq!((outcome.score, outcome.is_accepted()), (4, false));
        assert_eq!(outcome.rejection, Some(Rejection::TooWeak { score: 4, lists: Lists::Both }));
        let outcome = eval(&e, "ContoS0Bl@nkf9!");
        assert_eq!((outcome.score, outcome.is_accepted()), (5, true));
        // "Bl@nK" normalizes to the banned "blank".
        assert_eq!(&*eval(&e, "Bl@nK").matches[0].term, "blank");
    }

    #[test]
    fn first_name_is_rejected_outright() {
        let e = seed_evaluator(EnforcementMode::Enforce);
        let user = UserContext { first_name: "Sebastian".into(), ..UserContext::default() };
        let outcome = e.evaluate(&SecretString::from("MyCh@nc3W!th$eb4st!an"), &user, Operation::Set);
        assert!(outcome.score >= PASSING_SCORE, "the score alone would pass: {}", outcome.score);
        assert_eq!(outcome.verdict, Verdict::Rejected);
        assert_eq!(outcome.rejection, Some(Rejection::ContainsName(NameKind::FirstName)));
        assert_eq!(outcome.rejection.unwrap().to_string(), "contains the user's first name");
        assert_eq!(outcome.events, EventIds { filter: 10017, reason: Some(30022) });
    }

    #[test]
    fn names_shorter_than_four_characters_are_ignored() {
        let e = seed_evaluator(EnforcementMode::Enforce);
        let user = UserContext {
            first_name: "Max".into(),
            last_name: "Mustermann-Lüdenscheid".into(),
            sam_account_name: "jdoe".into(),
            ..UserContext::default()
        };
        let check = |pw: &str| e.evaluate(&SecretString::from(pw), &user, Operation::Change).rejection;
        assert_eq!(check("Max!2024Winter#Blue"), None);
        assert_eq!(check("xx-LÜDENSCHEID-42"), Some(Rejection::ContainsName(NameKind::LastName)));
        assert_eq!(check("Quiet.River.jd0e.9"), Some(Rejection::ContainsName(NameKind::AccountName)));
        assert_eq!(check("musterman-ludenscheid"), None, "ü is not u");
    }

    #[test]
    fn tenant_name_is_rejected() {
        let e = Evaluator::new(EvaluatorConfig {
            tenant_name: Some("Contoso Ltd".into()),
            global_list: GlobalList::dangerous_empty(),
            ..EvaluatorConfig::default()
        });
        let outcome = eval(&e, "Blue-C0nt0s0-Horse-17");
        assert_eq!(outcome.rejection, Some(Rejection::ContainsName(NameKind::TenantName)));
        assert_eq!(outcome.rejection.unwrap().to_string(), "contains the organization name");
    }

    #[test]
    fn audit_mode_accepts_and_reports() {
        let e = seed_evaluator(EnforcementMode::Audit);
        let outcome = eval(&e, "Ch@nc30fS3cur!ty");
        assert_eq!(outcome.verdict, Verdict::AcceptedInAuditMode);
        assert!(outcome.is_accepted());
        assert!(outcome.rejection.is_some());
        assert_eq!(outcome.events, EventIds { filter: 10025, reason: Some(30007) });
    }

    #[test]
    fn event_ids_follow_microsofts_table() {
        use Operation::{Change, Set};
        let weak = |lists| Some(Rejection::TooWeak { score: 1, lists });
        let name = Some(Rejection::ContainsName(NameKind::FirstName));
        let ids = |v, r, o| {
            let e = event_ids(v, r, o);
            (e.filter, e.reason)
        };
        assert_eq!(ids(Verdict::Accepted, None, Change), (10014, None));
        assert_eq!(ids(Verdict::Accepted, None, Set), (10015, None));
        let rejected = Verdict::Rejected;
        assert_eq!(ids(rejected, weak(Lists::Custom), Change), (10016, Some(30002)));
        assert_eq!(ids(rejected, weak(Lists::Custom), Set), (10017, Some(30003)));
        assert_eq!(ids(rejected, weak(Lists::Global), Change), (10016, Some(30004)));
        assert_eq!(ids(rejected, weak(Lists::Global), Set), (10017, Some(30005)));
        assert_eq!(ids(rejected, weak(Lists::Neither), Set), (10017, Some(30005)));
        assert_eq!(ids(rejected, weak(Lists::Both), Change), (10016, Some(30026)));
        assert_eq!(ids(rejected, weak(Lists::Both), Set), (10017, Some(30027)));
        assert_eq!(ids(rejected, name, Change), (10016, Some(30021)));
        assert_eq!(ids(rejected, name, Set), (10017, Some(30022)));
        let audit = Verdict::AcceptedInAuditMode;
        assert_eq!(ids(audit, weak(Lists::Custom), Change), (10024, Some(30008)));
        assert_eq!(ids(audit, weak(Lists::Custom), Set), (10025, Some(30007)));
        assert_eq!(ids(audit, weak(Lists::Global), Change), (10024, Some(30010)));
        assert_eq!(ids(audit, weak(Lists::Global), Set), (10025, Some(30009)));
        assert_eq!(ids(audit, weak(Lists::Both), Change), (10024, Some(30028)));
        assert_eq!(ids(audit, weak(Lists::Both), Set), (10025, Some(30029)));
        // As published: the user-name audit row uses the fail filter events.
        assert_eq!(ids(audit, name, Change), (10016, Some(30024)));
        assert_eq!(ids(audit, name, Set), (10017, Some(30023)));
    }

    #[test]
    fn empty_and_very_long_passwords() {
        let e = Evaluator::new(EvaluatorConfig::default());
        let outcome = eval(&e, "");
        assert_eq!((outcome.score, outcome.verdict), (0, Verdict::Rejected));
        assert_eq!(outcome.rejection, Some(Rejection::TooWeak { score: 0, lists: Lists::Neither }));
        assert_eq!(outcome.events, EventIds { filter: 10017, reason: Some(30005) });

        let long = "Zq8#vW2%kR6&".repeat(30);
        let outcome = eval(&e, &long);
        assert!(outcome.is_accepted(), "{}", outcome.score);
        let repeated = "password".repeat(40);
        let outcome = eval(&e, &repeated);
        assert_eq!(outcome.score, 40);
        assert!(outcome.matches.iter().all(|m| &*m.term == "password" && m.lists == Lists::Global));
    }

    #[test]
    fn global_list_catches_common_passwords() {
        let e = Evaluator::new(EvaluatorConfig::default());
        assert!(e.term_count() > 1900);
        for weak in ["P@ssw0rd1", "Qwerty123!", "Dragon123!", "L3tM3In!", "Football#1"] {
            let outcome = eval(&e, weak);
            assert!(!outcome.is_accepted(), "{weak}: {outcome:?}");
        }
        let outcome = eval(&e, "Tf9#qLm2-Vx7!rKp");
        assert!(outcome.is_accepted(), "{outcome:?}");
    }

    #[test]
    fn term_on_both_lists_counts_for_both() {
        let e = Evaluator::new(EvaluatorConfig {
            custom_list: CustomList::new(["Password"]).unwrap(),
            ..EvaluatorConfig::default()
        });
        let outcome = eval(&e, "P@ssword");
        assert_eq!(outcome.matches[0].lists, Lists::Both);
        assert_eq!(outcome.events.reason, Some(30027));
    }

    #[test]
    fn evaluator_is_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Evaluator>();
        assert_send_sync::<super::super::BreachChecker>();
        let e = std::sync::Arc::new(seed_evaluator(EnforcementMode::Enforce));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let e = e.clone();
                std::thread::spawn(move || eval(&e, "Ch@nc30fS3cur!ty").score)
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), 4);
        }
    }

    #[test]
    fn debug_output_holds_no_password() {
        let e = seed_evaluator(EnforcementMode::Enforce);
        let outcome = eval(&e, "Zebra!Quartz9Mountain");
        let text = format!("{outcome:?}");
        assert!(!text.to_lowercase().contains("zebra"), "{text}");
        assert!(!text.to_lowercase().contains("quartz"), "{text}");
    }
}
