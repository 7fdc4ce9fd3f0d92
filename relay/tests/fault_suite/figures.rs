//! The checks at the end, against the directory itself, the agents' audit logs and every file the
//! deployment wrote, as figures that must all be 0.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use pwrelay_shared::testkit::TestDc;
use serde_json::Value;

use crate::directory::{Bind, bind_settled};
use crate::workload::{AccountRun, Kind, SecretOutcome};

/// Successful-write audit events of the agent (`agent/src/audit.rs`): password set, reconciled,
/// generated and set, initial password set.
const WRITE_EVENTS: [u64; 4] = [4101, 4117, 4118, 4119];
/// A deliberate re-issue (an initial password whose result never arrived).
const REISSUE_EVENT: u64 = 4120;

/// One figure of the table.
#[derive(Debug)]
pub(crate) struct Figure {
    pub(crate) name: &'static str,
    pub(crate) value: usize,
    /// Up to a few examples (job ids, accounts, files), never a password.
    pub(crate) examples: Vec<String>,
}

/// The figures and what else the run counted.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) figures: Vec<Figure>,
    /// Counted and printed, not failures.
    pub(crate) notes: Vec<(String, String)>,
}

impl Report {
    fn figure(&mut self, name: &'static str, examples: Vec<String>) {
        self.figures.push(Figure { name, value: examples.len(), examples });
    }

    fn note(&mut self, name: impl Into<String>, value: impl ToString) {
        self.notes.push((name.into(), value.to_string()));
    }

    /// The failing figures.
    pub(crate) fn failures(&self) -> Vec<&Figure> {
        self.figures.iter().filter(|f| f.value > 0).collect()
    }

    pub(crate) fn print(&self, title: &str) {
        let width =
            self.figures.iter().map(|f| f.name.len()).chain(self.notes.iter().map(|n| n.0.len())).max().unwrap_or(0);
        println!("\n{title}\n");
        println!("| {:<width$} | {:>7} |", "figure (must be 0)", "value");
        println!("|-{:-<width$}-|-{:->7}-|", "", "");
        for figure in &self.figures {
            println!("| {:<width$} | {:>7} |", figure.name, figure.value);
        }
        println!();
        println!("| {:<width$} | {:>7} |", "also counted", "value");
        println!("|-{:-<width$}-|-{:->7}-|", "", "");
        for (name, value) in &self.notes {
            println!("| {name:<width$} | {value:>7} |");
        }
        for figure in self.failures() {
            println!("\n{} = {}; for example:", figure.name, figure.value);
            for example in figure.examples.iter().take(8) {
                println!("  - {example}");
            }
        }
    }
}

/// Per job id: successful-write events and deliberate re-issues in every agent's audit log.
fn audited_writes(audit_logs: &[PathBuf]) -> (BTreeMap<String, (usize, usize)>, BTreeSet<String>) {
    let mut per_job: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut unreadable = BTreeSet::new();
    for path in audit_logs {
        let Ok(text) = std::fs::read_to_string(path) else {
            unreadable.insert(path.display().to_string());
            continue;
        };
        for line in text.lines() {
            // A line cut off by a SIGKILL is not an event.
            let Ok(event) = serde_json::from_str::<Value>(line) else { continue };
            let Some(job) = event["job_id"].as_str() else { continue };
            let id = event["event_id"].as_u64().unwrap_or_default();
            let name = event["event"].as_str().unwrap_or_default();
            let entry = per_job.entry(job.to_owned()).or_default();
            if id == REISSUE_EVENT || name.ends_with("_reissued") {
                entry.1 += 1;
            } else if WRITE_EVENTS.contains(&id) {
                entry.0 += 1;
            }
        }
    }
    (per_job, unreadable)
}

/// Files under `paths` holding any of `passwords` verbatim: (file, how many passwords).
fn plaintext_hits(paths: &[PathBuf], passwords: &BTreeSet<&str>) -> Vec<String> {
    let mut hits = Vec::new();
    for path in paths {
        let Ok(bytes) = std::fs::read(path) else { continue };
        let found = count_found(&bytes, passwords);
        if found > 0 {
            hits.push(format!("{}: {found} password(s) in clear", path.display()));
        }
    }
    hits
}

/// How many of `needles` occur in `haystack`: one pass over it, looking each position's first
/// bytes up in an index of the needles' prefixes (a naive search per password takes minutes over
/// the logs of a long run).
fn count_found(haystack: &[u8], needles: &BTreeSet<&str>) -> usize {
    const PREFIX: usize = 6;
    let mut index: std::collections::HashMap<&[u8], Vec<&[u8]>> = std::collections::HashMap::new();
    let mut short = Vec::new();
    for needle in needles.iter().map(|n| n.as_bytes()).filter(|n| !n.is_empty()) {
        if needle.len() < PREFIX {
            short.push(needle);
        } else {
            index.entry(&needle[..PREFIX]).or_default().push(needle);
        }
    }
    let mut found: BTreeSet<&[u8]> = short.into_iter().filter(|n| haystack.windows(n.len()).any(|w| w == *n)).collect();
    for (at, window) in haystack.windows(PREFIX).enumerate() {
        if let Some(candidates) = index.get(window) {
            for needle in candidates {
                if haystack[at..].starts_with(needle) {
                    found.insert(needle);
                }
            }
        }
    }
    found.len()
}

/// Where the plaintext scan looks.
#[derive(Debug)]
pub(crate) struct ScannedFiles {
    pub(crate) logs: Vec<PathBuf>,
    pub(crate) store: Vec<PathBuf>,
    pub(crate) agent_state: Vec<PathBuf>,
}

/// Checks every account in the directory and every file, and builds the report.
pub(crate) async fn check(
    dc: &TestDc,
    accounts: &[AccountRun],
    audit_logs: &[PathBuf],
    files: &[ScannedFiles],
) -> Report {
    let mut report = Report::default();
    let jobs: Vec<_> = accounts.iter().flat_map(|a| a.jobs.iter().map(move |j| (a, j))).collect();

    // Jobs not final.
    let open: Vec<String> = jobs
        .iter()
        .filter(|(_, j)| j.id.is_some() && !j.is_final())
        .map(|(a, j)| {
            format!(
                "job {} ({}) of {}: {}",
                j.id.as_deref().unwrap_or("?"),
                j.kind.label(),
                a.user.sam,
                j.note.as_deref().unwrap_or("")
            )
        })
        .collect();
    report.figure("jobs not final", open);
    let refused: Vec<String> = jobs
        .iter()
        .filter(|(_, j)| j.id.is_none() && j.state.is_none())
        .map(|(a, j)| format!("{} for {}: {}", j.kind.label(), a.user.sam, j.note.as_deref().unwrap_or("")))
        .collect();
    report.figure("requests the relay never accepted or never made a job of", refused);

    // The directory: each account's password against its last succeeded job's.
    let mut wrong_password = Vec::new();
    let mut older_landed = Vec::new();
    let mut last_secret_bad = Vec::new();
    let mut unverifiable = 0usize;
    for account in accounts {
        let last = account.jobs.iter().rposition(|j| j.succeeded());
        let expected = match last {
            Some(i) => account.jobs[i].password.clone(),
            None => Some(account.user.password.expose_secret().to_owned()),
        };
        let last_kind = last.map(|i| account.jobs[i].kind);
        let binds_expected = match &expected {
            Some(password) => Some(bind_settled(dc, &account.user.dn, password).await),
            None => None,
        };
        let expected_matches = matches!(binds_expected, Some(Bind::Matches));
        if let Some(Bind::Error(e)) = &binds_expected {
            wrong_password.push(format!("{}: the check bind failed: {e}", account.user.sam));
            continue;
        }
        // Which older password binds instead, if any (newest first; the account's initial one last).
        let mut older: Option<String> = None;
        if !expected_matches {
            let history = account.jobs[..last.unwrap_or(0)]
                .iter()
                .enumerate()
                .rev()
                .filter_map(|(n, j)| {
                    j.password.as_ref().map(|p| {
                        (
                            format!(
                                "job {} #{n} ({})",
                                j.id.as_deref().unwrap_or("?"),
                                j.state.as_deref().unwrap_or("not final")
                            ),
                            p.clone(),
                        )
                    })
                })
                .chain(last.is_some().then(|| {
                    ("the account's initial password".to_owned(), account.user.password.expose_secret().to_owned())
                }));
            // Jobs after the last succeeded one (failed or open) that chose their password.
            let later = account.jobs[last.map_or(0, |i| i + 1)..].iter().filter_map(|j| {
                j.password.as_ref().map(|p| {
                    (
                        format!(
                            "later job {} ({})",
                            j.id.as_deref().unwrap_or("?"),
                            j.state.as_deref().unwrap_or("not final")
                        ),
                        p.clone(),
                    )
                })
            });
            for (what, password) in later.chain(history) {
                if bind_settled(dc, &account.user.dn, &password).await == Bind::Matches {
                    older = Some(what);
                    break;
                }
            }
        }
        let last_id = last.and_then(|i| account.jobs[i].id.clone()).unwrap_or_else(|| "none".into());
        match (&expected, expected_matches, &older) {
            (Some(_), true, _) => {}
            (Some(_), false, found) => {
                let also = found.as_deref().map_or("no known password binds".to_owned(), |w| format!("binds with {w}"));
                wrong_password.push(format!(
                    "{}: not the password of its last succeeded job {last_id}; {also}",
                    account.user.sam
                ));
                if let Some(what) = found.as_deref().filter(|w| !w.starts_with("later")) {
                    older_landed.push(format!(
                        "{}: binds with {what}, not with its last succeeded job {last_id}",
                        account.user.sam
                    ));
                }
            }
            (None, _, found) => {
                // The last succeeded job's password is unknown: it was never handed out.
                if let Some(what) = found {
                    wrong_password.push(format!(
                        "{}: binds with {what}, not with its last succeeded job {last_id}",
                        account.user.sam
                    ));
                    if !what.starts_with("later") {
                        older_landed.push(format!(
                            "{}: binds with {what}, not with its last succeeded job {last_id}",
                            account.user.sam
                        ));
                    }
                }
            }
        }
        if let (Some(i), Some(kind)) = (last, last_kind)
            && kind.returns_password()
        {
            let job = &account.jobs[i];
            match (&job.secret, expected_matches) {
                (SecretOutcome::LostInTransit | SecretOutcome::Declared(_), _) => unverifiable += 1,
                (SecretOutcome::Missing(why), _) => {
                    last_secret_bad.push(format!(
                        "{}: job {last_id} ({}): not retrievable: {why}",
                        account.user.sam,
                        kind.label()
                    ));
                }
                (_, false) => {
                    last_secret_bad.push(format!(
                        "{}: job {last_id} ({}): the handed-out password does not bind",
                        account.user.sam,
                        kind.label()
                    ));
                }
                _ => {}
            }
        }
    }
    report.figure("accounts whose password is not their last succeeded job's", wrong_password);
    report.figure("accounts whose password is an older job's (a write landed after a later one)", older_landed);
    report.figure("last generated passwords (generate, initial) not retrievable or not binding", last_secret_bad);

    // Every generated secret exactly once.
    let mut not_once = Vec::new();
    let mut lost_in_transit = 0usize;
    let mut declared = 0usize;
    for (account, job) in &jobs {
        if !(job.kind.returns_password() && job.succeeded()) {
            continue;
        }
        let id = job.id.as_deref().unwrap_or("?");
        match &job.secret {
            SecretOutcome::ReadOnce | SecretOutcome::NotExpected => {}
            SecretOutcome::ReadTwice => not_once.push(format!("job {id} of {}: handed out twice", account.user.sam)),
            SecretOutcome::Missing(why) => not_once.push(format!("job {id} of {}: {why}", account.user.sam)),
            SecretOutcome::LostInTransit => lost_in_transit += 1,
            SecretOutcome::Declared(_) => declared += 1,
        }
    }
    report.figure("generated passwords (generate, initial) not retrievable exactly once", not_once);

    // Jobs applied twice, from the agents' audit logs.
    let (audited, unreadable) = audited_writes(audit_logs);
    let ours: BTreeSet<&str> = jobs.iter().filter_map(|(_, j)| j.id.as_deref()).collect();
    let mut twice = Vec::new();
    let mut reissues = 0usize;
    for (job, (writes, reissued)) in &audited {
        reissues += reissued;
        if writes.saturating_sub(*reissued) > 1 {
            twice.push(format!("job {job}: {writes} successful writes audited ({reissued} deliberate re-issues)"));
        }
    }
    twice.extend(unreadable.into_iter().map(|p| format!("audit log {p} unreadable")));
    report.figure("jobs applied twice (successful-write audit events per job id)", twice);

    // Plaintext passwords in any file.
    let mut passwords: BTreeSet<&str> = BTreeSet::new();
    for (_, job) in &jobs {
        if let Some(p) = job.password.as_deref() {
            passwords.insert(p);
        }
    }
    let mut hits = BTreeSet::new();
    for scan in files {
        for list in [&scan.logs, &scan.store, &scan.agent_state] {
            hits.extend(plaintext_hits(list, &passwords));
        }
    }
    report.figure("files holding a plaintext password (logs, store, agents' state)", hits.into_iter().collect());

    // What else happened.
    let succeeded_writes_audited =
        audited.iter().filter(|(j, (writes, _))| *writes > 0 && ours.contains(j.as_str())).count();
    report.note("passwords checked in the files", passwords.len());
    report.note("job ids with a successful write audited", succeeded_writes_audited);
    report.note("deliberate re-issues audited (4120 / *_reissued)", reissues);
    report.note("generated-password reads whose answer a fault cut off (410 after)", lost_in_transit);
    report.note("new hires failed with the workflow told (e.g. link key lost in a relay restart)", declared);
    report.note("accounts not checkable (last password's read cut off, or declared failed)", unverifiable);
    let mut by_kind: BTreeMap<(Kind, String), usize> = BTreeMap::new();
    for (_, job) in &jobs {
        let outcome = match (job.state.as_deref(), job.error_code.as_deref()) {
            (Some("failed"), Some(code)) => format!("failed: {code}"),
            (Some(state), _) => state.to_owned(),
            (None, _) if job.id.is_none() => "not accepted".to_owned(),
            (None, _) => "not final".to_owned(),
        };
        *by_kind.entry((job.kind, outcome)).or_default() += 1;
    }
    for ((kind, outcome), n) in by_kind {
        report.note(format!("jobs {}: {outcome}", kind.label()), n);
    }
    report
}

/// The files of `dir` that the scan reads, for a directory-level summary.
pub(crate) fn describe_files(files: &ScannedFiles) -> String {
    let names = |list: &[PathBuf]| {
        list.iter()
            .filter(|p| p.exists())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "logs [{}], store [{}], agents' state [{}]",
        names(&files.logs),
        names(&files.store),
        names(&files.agent_state)
    )
}

#[test]
fn the_plaintext_scan_finds_each_password_once_wherever_it_stands() {
    let needles: BTreeSet<&str> = ["Abc!def-123", "Abc!xyz-456", "Qq1!", "absent-Pass9"].into_iter().collect();
    let haystack = b"..Abc!def-123 Abc!xy Abc!xyz-456 Abc!def-123 Qq1!";
    assert_eq!(count_found(haystack, &needles), 3);
    assert_eq!(count_found(b"", &needles), 0);
}
