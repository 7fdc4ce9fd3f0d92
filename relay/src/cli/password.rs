//! `pwrelay password ...`: check, generate and derive passwords with the shared engine.
//!
//! Secrets (the password to check, the derivation salt) are read from a file (`--password-file`,
//! `--salt-file`; `-` is standard input), an environment variable (`--password-env`,
//! `--salt-env`) or, by default, standard input: never from the command line, where they would
//! show in `ps` and shell history. One trailing newline is removed from file and stdin input.
//!
//! Exit codes: 0 pass (or success), 1 the password fails the check (or generation failed),
//! 64 bad usage or configuration (options, custom list), 65 bad input data (not UTF-8, salt too
//! short), 66 an input file cannot be read.

use std::ffi::OsString;
use std::io::{self, IsTerminal as _, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pwrelay_shared::derive::{self, DeriveError, DeriveParams, HashAlgorithm, UpnCase};
use pwrelay_shared::password::{
    self, BannedListError, CustomList, EnforcementMode, Evaluation, Evaluator, EvaluatorConfig, GenerateError,
    GenerateMode, GenerateOptions, GlobalList, Lists, Operation, PASSING_SCORE, Rejection, UserContext, Verdict,
};
use pwrelay_shared::policy::{Policy, PolicyFailure, PolicySource};
use pwrelay_shared::secret::SecretString;
use zeroize::Zeroizing;

/// Success, or a password that passes.
const EXIT_PASS: u8 = 0;
/// The password fails the check, or no password could be generated.
const EXIT_FAIL: u8 = 1;
/// Bad options or configuration (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Bad input data (EX_DATAERR).
const EXIT_DATA: u8 = 65;
/// An input file cannot be read (EX_NOINPUT).
const EXIT_NO_INPUT: u8 = 66;
/// Largest secret or list file read (a password has at most 256 characters).
const MAX_INPUT_BYTES: u64 = 64 * 1024;

/// `pwrelay password` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PasswordCommand {
    /// Check a password against an AD policy and the banned-password rules.
    ///
    /// Prints the result, the score, the banned terms found, the reasons and the Password
    /// Protection event ids; exits 0 when the password passes, 1 when it fails. The password is
    /// read from standard input unless --password-file or --password-env is given.
    Check(CheckArgs),
    /// Generate a password that meets the policy and passes the banned-password check.
    ///
    /// The password is checked for the user given by the name options, then printed on
    /// standard output.
    Generate(GenerateArgs),
    /// Derive the seed-compatible (New-Pbkdf2Hash) password of a UPN.
    ///
    /// base64(PBKDF2-HMAC(UPN, salt, iterations, length)), byte-identical to .NET's
    /// Rfc2898DeriveBytes. The salt is read from standard input unless --salt-file or --salt-env
    /// is given.
    Derive(DeriveArgs),
}

/// Options of `password check`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// Read the password from this file ("-": standard input).
    #[arg(long, value_name = "PATH", conflicts_with = "password_env")]
    password_file: Option<PathBuf>,
    /// Read the password from this environment variable.
    #[arg(long, value_name = "NAME")]
    password_env: Option<String>,
    #[command(flatten)]
    user: UserArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    lists: ListArgs,
    /// enforce: a failing password fails; audit: it passes and the would-be failure is reported.
    #[arg(long, value_enum, default_value_t = ModeArg::Enforce)]
    mode: ModeArg,
    /// set: an administrator reset; change: the user's own change (only the event ids differ).
    #[arg(long, value_enum, default_value_t = OperationArg::Set)]
    operation: OperationArg,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `password generate`.
#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// Length in characters (for a passphrase: the least length); raised to the policy minimum.
    #[arg(long, default_value_t = 16)]
    length: usize,
    /// random: letters, digits, symbols; friendly: no look-alike characters, groups of four;
    /// passphrase: words, a digit and a symbol.
    #[arg(long, value_enum, default_value_t = GenerateModeArg::Random)]
    mode: GenerateModeArg,
    /// Number of words of a passphrase.
    #[arg(long, default_value_t = 4)]
    words: usize,
    #[command(flatten)]
    user: UserArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    lists: ListArgs,
}

/// Options of `password derive`.
#[derive(Debug, clap::Args)]
pub(crate) struct DeriveArgs {
    /// The user principal name.
    #[arg(long)]
    upn: String,
    /// Casing applied to the UPN before hashing.
    #[arg(long, value_enum, default_value_t = CaseArg::Lower)]
    case: CaseArg,
    /// PBKDF2 iterations.
    #[arg(long, default_value_t = 1000)]
    iterations: u32,
    /// Derived length in bytes (before base64).
    #[arg(long, default_value_t = 60)]
    length: usize,
    /// HMAC hash.
    #[arg(long, value_enum, default_value_t = HashArg::Sha512)]
    hash: HashArg,
    /// Read the salt from this file ("-": standard input).
    #[arg(long, value_name = "PATH", conflicts_with = "salt_env")]
    salt_file: Option<PathBuf>,
    /// Read the salt from this environment variable.
    #[arg(long, value_name = "NAME")]
    salt_env: Option<String>,
}

/// The user the password is for.
#[derive(Debug, Default, clap::Args)]
struct UserArgs {
    /// The user's sAMAccountName (the password may not contain it).
    #[arg(long, value_name = "NAME")]
    sam_account_name: Option<String>,
    /// The user's displayName (the password may not contain its words).
    #[arg(long, value_name = "NAME")]
    display_name: Option<String>,
    /// The user's first name, givenName (the password may not contain it).
    #[arg(long, value_name = "NAME")]
    first_name: Option<String>,
    /// The user's last name, sn (the password may not contain it).
    #[arg(long, value_name = "NAME")]
    last_name: Option<String>,
}

/// The AD policy to apply (defaults: AD's Default Domain Policy).
#[derive(Debug, clap::Args)]
struct PolicyArgs {
    /// Minimum length in characters.
    #[arg(long, default_value_t = 7)]
    min_length: u32,
    /// Whether AD's complexity rules apply.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    complexity: Switch,
}

/// The banned-term lists.
#[derive(Debug, clap::Args)]
struct ListArgs {
    /// A custom banned-term list: one term per line, at most 1000 terms of 4 to 16 characters.
    #[arg(long, value_name = "PATH")]
    custom_list: Option<PathBuf>,
    /// The organization (tenant) name; passwords containing it are rejected.
    #[arg(long, value_name = "NAME")]
    tenant_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OperationArg {
    Set,
    Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GenerateModeArg {
    Random,
    Friendly,
    Passphrase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CaseArg {
    Lower,
    Upper,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HashArg {
    Sha512,
    Sha256,
}

/// Why a command could not do its work. Never holds a secret.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// Bad input data.
    #[error("{0}")]
    Data(String),
    /// An input file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    NoInput { path: PathBuf, source: io::Error },
    /// The custom list is invalid.
    #[error("invalid custom banned-term list {}: {source}", path.display())]
    CustomList { path: PathBuf, source: BannedListError },
    /// Generation failed.
    #[error(transparent)]
    Generate(GenerateError),
    /// Output could not be written.
    #[error("cannot write the output: {0}")]
    Output(io::Error),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::CustomList { .. } => EXIT_USAGE,
            CliError::Data(_) => EXIT_DATA,
            CliError::NoInput { .. } => EXIT_NO_INPUT,
            CliError::Generate(
                GenerateError::TooShort { .. } | GenerateError::TooLong { .. } | GenerateError::Words { .. },
            ) => EXIT_USAGE,
            CliError::Generate(_) | CliError::Output(_) => EXIT_FAIL,
        }
    }
}

/// The process's streams and environment, or test doubles.
struct Io<'a> {
    stdin: &'a mut dyn Read,
    stdin_is_terminal: bool,
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
    env: &'a dyn Fn(&str) -> Option<OsString>,
}

/// Runs one `pwrelay password` subcommand.
pub(crate) fn run(command: PasswordCommand) -> ExitCode {
    let stdin = io::stdin();
    let stdin_is_terminal = stdin.is_terminal();
    let mut stdin = stdin.lock();
    let mut stdout = io::stdout().lock();
    let mut stderr = io::stderr().lock();
    let env = |name: &str| std::env::var_os(name);
    let mut io = Io { stdin: &mut stdin, stdin_is_terminal, stdout: &mut stdout, stderr: &mut stderr, env: &env };
    ExitCode::from(execute(command, &mut io))
}

/// Runs `command` against `io`; returns the exit code.
fn execute(command: PasswordCommand, io: &mut Io<'_>) -> u8 {
    let result = match command {
        PasswordCommand::Check(args) => check(&args, io),
        PasswordCommand::Generate(args) => generate(&args, io),
        PasswordCommand::Derive(args) => derive(&args, io),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io.stderr, "error: {e}");
            e.exit_code()
        }
    }
}

fn check(args: &CheckArgs, io: &mut Io<'_>) -> Result<u8, CliError> {
    let policy = args.policy.policy();
    let evaluator = evaluator(&args.lists, args.mode)?;
    let password = read_secret(args.password_file.as_deref(), args.password_env.as_deref(), "password", io)?;
    let user = args.user.context();
    let failures = policy.check(&password, &user.account_names());
    let operation = match args.operation {
        OperationArg::Set => Operation::Set,
        OperationArg::Change => Operation::Change,
    };
    let evaluation = evaluator.evaluate(&password, &user, operation);
    drop(password);
    let passes = failures.is_empty() && evaluation.is_accepted();
    let report = if args.json {
        json_report(passes, &failures, &evaluation)
    } else {
        text_report(passes, &failures, &evaluation)
    };
    io.stdout.write_all(report.as_bytes()).map_err(CliError::Output)?;
    Ok(if passes { EXIT_PASS } else { EXIT_FAIL })
}

fn generate(args: &GenerateArgs, io: &mut Io<'_>) -> Result<u8, CliError> {
    let policy = args.policy.policy();
    let evaluator = evaluator(&args.lists, ModeArg::Enforce)?;
    let mode = match args.mode {
        GenerateModeArg::Random => GenerateMode::Random,
        GenerateModeArg::Friendly => GenerateMode::Friendly,
        GenerateModeArg::Passphrase => GenerateMode::Passphrase,
    };
    let options = GenerateOptions { mode, length: args.length, words: args.words };
    let generated =
        password::generate(&policy, &options, &evaluator, &args.user.context()).map_err(CliError::Generate)?;
    let line = Zeroizing::new(format!("{}\n", generated.expose_secret()));
    io.stdout.write_all(line.as_bytes()).map_err(CliError::Output)?;
    Ok(EXIT_PASS)
}

fn derive(args: &DeriveArgs, io: &mut Io<'_>) -> Result<u8, CliError> {
    let params = DeriveParams {
        hash: match args.hash {
            HashArg::Sha512 => HashAlgorithm::Sha512,
            HashArg::Sha256 => HashAlgorithm::Sha256,
        },
        iterations: args.iterations,
        length: args.length,
        case: match args.case {
            CaseArg::Lower => UpnCase::Lower,
            CaseArg::Upper => UpnCase::Upper,
            CaseArg::None => UpnCase::Unchanged,
        },
    };
    // Check the options before reading the salt, so a typo does not consume standard input.
    if args.upn.is_empty() {
        return Err(CliError::Usage(DeriveError::EmptyUpn.to_string()));
    }
    let salt = read_secret(args.salt_file.as_deref(), args.salt_env.as_deref(), "salt", io)?;
    let derived = derive::derive(&args.upn, &salt, &params).map_err(|e| match e {
        DeriveError::SaltTooShort => CliError::Data(e.to_string()),
        DeriveError::EmptyUpn | DeriveError::Iterations { .. } | DeriveError::Length { .. } => {
            CliError::Usage(e.to_string())
        }
    })?;
    let line = Zeroizing::new(format!("{}\n", derived.expose_secret()));
    io.stdout.write_all(line.as_bytes()).map_err(CliError::Output)?;
    Ok(EXIT_PASS)
}

impl UserArgs {
    fn context(&self) -> UserContext {
        UserContext {
            sam_account_name: self.sam_account_name.clone().unwrap_or_default(),
            display_name: self.display_name.clone().unwrap_or_default(),
            first_name: self.first_name.clone().unwrap_or_default(),
            last_name: self.last_name.clone().unwrap_or_default(),
        }
    }
}

impl PolicyArgs {
    fn policy(&self) -> Policy {
        Policy {
            min_length: self.min_length,
            complexity: self.complexity == Switch::On,
            source: PolicySource::Local,
            ..Policy::default()
        }
    }
}

fn evaluator(lists: &ListArgs, mode: ModeArg) -> Result<Evaluator, CliError> {
    let custom_list = match &lists.custom_list {
        None => CustomList::default(),
        Some(path) => {
            let bytes = read_limited_file(path)?;
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                CliError::Data(format!("the custom banned-term list {} is not valid UTF-8", path.display()))
            })?;
            CustomList::parse(&text).map_err(|source| CliError::CustomList { path: path.clone(), source })?
        }
    };
    Ok(Evaluator::new(EvaluatorConfig {
        custom_list,
        global_list: GlobalList::builtin(),
        mode: match mode {
            ModeArg::Enforce => EnforcementMode::Enforce,
            ModeArg::Audit => EnforcementMode::Audit,
        },
        tenant_name: lists.tenant_name.clone().filter(|t| !t.trim().is_empty()),
    }))
}

/// Reads a secret from a file, an environment variable or standard input.
fn read_secret(file: Option<&Path>, env: Option<&str>, what: &str, io: &mut Io<'_>) -> Result<SecretString, CliError> {
    if let Some(name) = env {
        let value =
            (io.env)(name).ok_or_else(|| CliError::Usage(format!("the environment variable {name} is not set")))?;
        return value
            .into_string()
            .map(SecretString::new)
            .map_err(|_| CliError::Data(format!("the {what} in the environment variable {name} is not valid UTF-8")));
    }
    let (bytes, source) = match file {
        Some(path) if path != Path::new("-") => (read_limited_file(path)?, format!("the file {}", path.display())),
        _ => {
            if io.stdin_is_terminal {
                let _ = writeln!(
                    io.stderr,
                    "reading the {what} from standard input (it will show as you type); end with Ctrl-D"
                );
            }
            let mut bytes = Zeroizing::new(Vec::new());
            io.stdin
                .take(MAX_INPUT_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| CliError::Data(format!("cannot read the {what} from standard input: {e}")))?;
            (bytes, "standard input".to_owned())
        }
    };
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(CliError::Data(format!("the {what} read from {source} is larger than 64 KiB")));
    }
    let mut text = match String::from_utf8(bytes.to_vec()) {
        Ok(text) => text,
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            return Err(CliError::Data(format!("the {what} read from {source} is not valid UTF-8")));
        }
    };
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(SecretString::new(text))
}

fn read_limited_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let no_input = |source| CliError::NoInput { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(no_input)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes).map_err(no_input)?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(CliError::Data(format!("{} is larger than 64 KiB", path.display())));
    }
    Ok(bytes)
}

fn lists_name(lists: Lists) -> &'static str {
    match lists {
        Lists::Neither => "none",
        Lists::Custom => "custom",
        Lists::Global => "global",
        Lists::Both => "custom and global",
    }
}

fn failure_code(failure: &PolicyFailure) -> &'static str {
    match failure {
        PolicyFailure::Empty => "empty",
        PolicyFailure::TooShort { .. } => "too_short",
        PolicyFailure::TooLong { .. } => "too_long",
        PolicyFailure::ContainsAccountName => "contains_account_name",
        PolicyFailure::ContainsDisplayName => "contains_display_name",
        PolicyFailure::TooFewCharacterClasses { .. } => "too_few_character_classes",
    }
}

fn rejection_code(rejection: &Rejection) -> &'static str {
    match rejection {
        Rejection::ContainsName(_) => "contains_name",
        Rejection::TooWeak { .. } => "too_weak",
    }
}

fn verdict_name(passes: bool, evaluation: &Evaluation) -> &'static str {
    match (passes, evaluation.verdict) {
        (false, _) => "rejected",
        (true, Verdict::AcceptedInAuditMode) => "accepted in audit mode (would have been rejected)",
        (true, _) => "accepted",
    }
}

fn text_report(passes: bool, failures: &[PolicyFailure], evaluation: &Evaluation) -> String {
    let mut out = format!("result: {}\n", verdict_name(passes, evaluation));
    out.push_str(&format!("score: {} (at least {PASSING_SCORE} needed)\n", evaluation.score));
    if evaluation.matches.is_empty() {
        out.push_str("banned terms: none\n");
    } else {
        let terms: Vec<String> = evaluation
            .matches
            .iter()
            .map(|m| {
                let how = if m.exact { "" } else { ", within one edit" };
                format!("{} ({} list{how})", m.term, lists_name(m.lists))
            })
            .collect();
        out.push_str(&format!("banned terms: {}\n", terms.join(", ")));
    }
    let reasons: Vec<String> =
        failures.iter().map(ToString::to_string).chain(evaluation.rejection.iter().map(ToString::to_string)).collect();
    if !reasons.is_empty() {
        out.push_str("reasons:\n");
        for reason in reasons {
            out.push_str(&format!("  - the password {reason}\n"));
        }
    }
    let events = &evaluation.events;
    match events.reason {
        Some(reason) => out.push_str(&format!("password protection events: {} {reason}\n", events.filter)),
        None => out.push_str(&format!("password protection events: {}\n", events.filter)),
    }
    out
}

fn json_report(passes: bool, failures: &[PolicyFailure], evaluation: &Evaluation) -> String {
    let value = serde_json::json!({
        "accepted": passes,
        "verdict": verdict_name(passes, evaluation),
        "score": evaluation.score,
        "passing_score": PASSING_SCORE,
        "banned_terms": evaluation.matches.iter().map(|m| serde_json::json!({
            "term": &*m.term,
            "lists": lists_name(m.lists),
            "exact": m.exact,
        })).collect::<Vec<_>>(),
        "policy_failures": failures.iter().map(|f| serde_json::json!({
            "code": failure_code(f),
            "message": format!("the password {f}"),
        })).collect::<Vec<_>>(),
        "rejection": evaluation.rejection.as_ref().map(|r| serde_json::json!({
            "code": rejection_code(r),
            "message": format!("the password {r}"),
        })),
        "audit_only": evaluation.verdict == Verdict::AcceptedInAuditMode,
        "events": {
            "filter": evaluation.events.filter,
            "reason": evaluation.events.reason,
        },
    });
    format!("{value}\n")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write as _;

    use clap::Parser;

    use super::*;

    /// A stand-in for the `pwrelay` binary's parser.
    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: PasswordCommand,
    }

    struct Outcome {
        code: u8,
        stdout: String,
        stderr: String,
    }

    fn run_with(args: &[&str], stdin: &[u8], env: &[(&str, &[u8])]) -> Outcome {
        let cli = TestCli::try_parse_from(std::iter::once("password").chain(args.iter().copied())).unwrap();
        let vars: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| {
                use std::os::unix::ffi::OsStringExt as _;
                ((*k).to_owned(), OsString::from_vec(v.to_vec()))
            })
            .collect();
        let lookup = move |name: &str| vars.get(name).cloned();
        let (mut input, mut stdout, mut stderr) = (stdin, Vec::new(), Vec::new());
        let mut io =
            Io { stdin: &mut input, stdin_is_terminal: false, stdout: &mut stdout, stderr: &mut stderr, env: &lookup };
        let code = execute(cli.command, &mut io);
        Outcome { code, stdout: String::from_utf8(stdout).unwrap(), stderr: String::from_utf8(stderr).unwrap() }
    }

    fn temp_file(contents: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents).unwrap();
        file
    }

    #[test]
    fn check_strong_password_from_stdin_passes() {
        let out = run_with(&["check"], b"Tf9#qLm2-Vx7!rKp\n", &[]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.starts_with("result: accepted\n"), "{}", out.stdout);
        assert!(out.stdout.contains("password protection events: 10015\n"), "{}", out.stdout);
    }

    #[test]
    fn check_reports_score_terms_reasons_and_events() {
        let list = temp_file(b"chance\nsecurity\n");
        let path = list.path().to_str().unwrap();
        let out = run_with(&["check", "--custom-list", path, "--min-length", "8"], b"S3cur!ty$ecru!ty1!", &[]);
        assert_eq!(out.code, 1);
        assert!(out.stdout.contains("result: rejected\n"), "{}", out.stdout);
        assert!(out.stdout.contains("score: 4 (at least 5 needed)\n"), "{}", out.stdout);
        assert!(
            out.stdout.contains(
                "banned terms: security (custom and global list), security (custom and global list, within one edit)"
            ),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("  - the password is too easy to guess"), "{}", out.stdout);
        assert!(out.stdout.contains("password protection events: 10017 30027\n"), "{}", out.stdout);
        assert!(!out.stdout.contains("S3cur"), "the password is never printed");
    }

    #[test]
    fn check_json_and_policy_failures() {
        let out = run_with(
            &["check", "--json", "--sam-account-name", "jdoe", "--min-length", "12", "--operation", "change"],
            b"xxjdoexx",
            &[],
        );
        assert_eq!(out.code, 1);
        let value: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(value["accepted"], false);
        let codes: Vec<&str> =
            value["policy_failures"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap()).collect();
        assert_eq!(codes, ["too_short", "contains_account_name", "too_few_character_classes"]);
        assert_eq!(value["rejection"]["code"], "contains_name");
        assert_eq!(value["events"]["filter"], 10016);
        assert_eq!(value["events"]["reason"], 30021);
    }

    #[test]
    fn check_audit_mode_passes_and_says_so() {
        let out = run_with(&["check", "--mode", "audit", "--complexity", "off", "--json"], b"P@ssw0rd", &[]);
        assert_eq!(out.code, 0, "{}", out.stdout);
        let value: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(value["audit_only"], true);
        assert_eq!(value["events"]["filter"], 10025);
        assert_eq!(value["events"]["reason"], 30009);
    }

    #[test]
    fn check_first_name_example() {
        let list = temp_file(b"chance\n");
        let path = list.path().to_str().unwrap();
        let out =
            run_with(&["check", "--custom-list", path, "--first-name", "Sebastian"], b"MyCh@nc3W!th$eb4st!an\n", &[]);
        assert_eq!(out.code, 1);
        assert!(out.stdout.contains("  - the password contains the user's first name\n"), "{}", out.stdout);
    }

    #[test]
    fn password_from_file_and_environment() {
        let file = temp_file(b"Tf9#qLm2-Vx7!rKp\r\n");
        let out = run_with(&["check", "--password-file", file.path().to_str().unwrap()], b"", &[]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let out = run_with(&["check", "--password-env", "PW"], b"", &[("PW", b"Tf9#qLm2-Vx7!rKp")]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        // Only one newline is stripped: a password that ends in a newline stays intact.
        let file = temp_file(b"Tf9#qLm2-Vx7!rKp\n\n");
        let out = run_with(&["check", "--json", "--password-file", file.path().to_str().unwrap()], b"", &[]);
        assert_eq!(out.code, 0);
    }

    #[test]
    fn bad_input_gives_clear_errors_and_exit_codes() {
        let out = run_with(&["check"], b"\xff\xfeabc\n", &[]);
        assert_eq!(out.code, 65);
        assert_eq!(out.stderr, "error: the password read from standard input is not valid UTF-8\n");
        assert!(out.stdout.is_empty());

        let out = run_with(&["check", "--password-env", "PW"], b"", &[("PW", b"\xffbad")]);
        assert_eq!(out.code, 65);
        assert!(out.stderr.contains("environment variable PW is not valid UTF-8"), "{}", out.stderr);

        let out = run_with(&["check", "--password-env", "MISSING"], b"", &[]);
        assert_eq!(out.code, 64);
        assert_eq!(out.stderr, "error: the environment variable MISSING is not set\n");

        let out = run_with(&["check", "--password-file", "/nonexistent/pw"], b"", &[]);
        assert_eq!(out.code, 66);
        assert!(out.stderr.starts_with("error: cannot read /nonexistent/pw: "), "{}", out.stderr);

        let big = vec![b'a'; 70 * 1024];
        let out = run_with(&["check"], &big, &[]);
        assert_eq!(out.code, 65);
        assert!(out.stderr.contains("larger than 64 KiB"), "{}", out.stderr);
    }

    #[test]
    fn empty_and_overlong_passwords_fail_the_check() {
        let out = run_with(&["check", "--json"], b"\n", &[]);
        assert_eq!(out.code, 1);
        let value: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(value["policy_failures"][0]["code"], "empty");
        assert_eq!(value["score"], 0);

        let long = format!("Aa1!{}", "x".repeat(253));
        let out = run_with(&["check", "--json"], long.as_bytes(), &[]);
        assert_eq!(out.code, 1);
        let value: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(value["policy_failures"][0]["code"], "too_long");
    }

    #[test]
    fn invalid_custom_lists_name_the_term() {
        let list = temp_file(b"contoso\nabc\n");
        let path = list.path().to_str().unwrap().to_owned();
        let out = run_with(&["check", "--custom-list", &path], b"whatever", &[]);
        assert_eq!(out.code, 64);
        assert_eq!(
            out.stderr,
            format!(
                "error: invalid custom banned-term list {path}: banned term \"abc\" is too short: terms need 4 to 16 characters\n"
            )
        );
        let many: String = (0..1001).map(|i| format!("term{i:05}\n")).collect();
        let list = temp_file(many.as_bytes());
        let out = run_with(&["check", "--custom-list", list.path().to_str().unwrap()], b"whatever", &[]);
        assert_eq!(out.code, 64);
        assert!(out.stderr.contains("has 1001 terms; at most 1000 are allowed"), "{}", out.stderr);
        let list = temp_file(b"abcdefghijklmnopq\n");
        let out = run_with(&["check", "--custom-list", list.path().to_str().unwrap()], b"whatever", &[]);
        assert!(out.stderr.contains("\"abcdefghijklmnopq\" is too long"), "{}", out.stderr);
    }

    #[test]
    fn generate_prints_one_compliant_password() {
        for mode in ["random", "friendly", "passphrase"] {
            let out = run_with(
                &["generate", "--mode", mode, "--length", "18", "--min-length", "14", "--sam-account-name", "jdoe"],
                b"",
                &[],
            );
            assert_eq!(out.code, 0, "{mode}: {}", out.stderr);
            let password = out.stdout.strip_suffix('\n').unwrap();
            assert!(!password.contains('\n'));
            assert!(password.chars().count() >= 18, "{mode}");
            // What it prints passes `check` for the same user and policy.
            let check =
                run_with(&["check", "--min-length", "14", "--sam-account-name", "jdoe"], out.stdout.as_bytes(), &[]);
            assert_eq!(check.code, 0, "{mode}: {}", check.stdout);
        }
        let out = run_with(&["generate", "--length", "4"], b"", &[]);
        assert_eq!(out.code, 64);
        assert!(out.stderr.contains("at least 8 characters"), "{}", out.stderr);
    }

    #[test]
    fn derive_matches_the_seed_vector() {
        let out = run_with(&["derive", "--upn", "Max.Mustermann@contoso.com"], b"ThisIsOurSharedHashValue\n", &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.stdout, "dbL+imdTEtq1cws2sqhfhWJuKX6ISJIOpzxh4aHSSM6MDIrrtVamN0H3bhotnn410gdj9hKfmxgHSm4R\n");
        let out = run_with(
            &["derive", "--upn", "Max.Mustermann@contoso.com", "--hash", "sha256", "--salt-env", "SALT"],
            b"",
            &[("SALT", b"ThisIsOurSharedHashValue")],
        );
        assert_eq!(out.stdout, "L6rHeC8R1HzDL41UA/UN6wo6S5zcsDDvW0uLBf199w6xTqHUpmZoJujXwy3LzCiZqiyyy2BMOjGDA0yN\n");
        let salt = temp_file(b"12345678\n");
        let out = run_with(
            &[
                "derive",
                "--upn",
                "max.mustermann@contoso.com",
                "--case",
                "none",
                "--iterations",
                "10000",
                "--length",
                "32",
                "--salt-file",
                salt.path().to_str().unwrap(),
            ],
            b"",
            &[],
        );
        assert_eq!(out.stdout, "zMa1WYlPTfjpeK1W5lP5lQy6HOO2gEuL27A5I39Um0Y=\n");
    }

    #[test]
    fn derive_refuses_bad_salts_and_options() {
        let out = run_with(&["derive", "--upn", "a@b.c"], b"short\n", &[]);
        assert_eq!(out.code, 65);
        assert!(out.stderr.starts_with("error: the salt is shorter than 8 bytes"), "{}", out.stderr);
        assert!(out.stdout.is_empty());
        let out = run_with(&["derive", "--upn", "a@b.c"], b"\xc3\x28invalid-utf8", &[]);
        assert_eq!(out.code, 65);
        assert_eq!(out.stderr, "error: the salt read from standard input is not valid UTF-8\n");
        let out = run_with(&["derive", "--upn", "a@b.c", "--iterations", "0"], b"long-enough-salt", &[]);
        assert_eq!(out.code, 64);
        let out = run_with(&["derive", "--upn", ""], b"long-enough-salt", &[]);
        assert_eq!(out.code, 64);
    }

    #[test]
    fn secrets_are_not_accepted_on_the_command_line() {
        assert!(TestCli::try_parse_from(["password", "check", "--password", "x"]).is_err());
        assert!(TestCli::try_parse_from(["password", "derive", "--upn", "a@b.c", "--salt", "x"]).is_err());
        assert!(TestCli::try_parse_from(["password", "check", "--password-file", "a", "--password-env", "B"]).is_err());
    }
}
