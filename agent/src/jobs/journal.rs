//! The durable journal of finished jobs: a redelivered job (after a lost result or a relay restart)
//! is answered from here instead of being applied twice.
//!
//! JSON lines `{"job_id", "finished_ms", "result"}` with the result protobuf-encoded (base64). Only
//! final outcomes are recorded (successes and failures that trying again would not change), and
//! never a secret. Entries older than [`RETENTION`] are dropped when the journal is opened.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use prost::Message as _;
use pwrelay_proto::agent::v1 as pb;
use serde::{Deserialize, Serialize};

/// How long finished jobs are remembered: longer than any relay keeps redelivering a job.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Serialize, Deserialize)]
struct Entry {
    job_id: String,
    finished_ms: i64,
    result: String,
}

/// The journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    results: HashMap<String, pb::JobResult>,
    file: File,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn open_append(path: &Path, truncate: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true);
    if truncate {
        options.write(true).truncate(true);
    } else {
        options.append(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

impl Journal {
    /// Opens the journal at `path`, dropping entries older than [`RETENTION`] and unreadable lines
    /// (a line cut short by a crash).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let cutoff = now_ms() - i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX);
        let mut kept: Vec<Entry> = Vec::new();
        if path.exists() {
            for line in BufReader::new(File::open(path)?).lines() {
                let Ok(entry) = serde_json::from_str::<Entry>(&line?) else { continue };
                if entry.finished_ms >= cutoff {
                    kept.push(entry);
                }
            }
        }
        let mut results = HashMap::new();
        for entry in &kept {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&entry.result)
                .ok()
                .and_then(|bytes| pb::JobResult::decode(bytes.as_slice()).ok());
            if let Some(result) = decoded {
                results.insert(entry.job_id.clone(), result);
            }
        }
        // Rewrite without the dropped lines, through a temporary file so a crash keeps the old one.
        let temporary = path.with_extension("jsonl.tmp");
        {
            let mut file = open_append(&temporary, true)?;
            for entry in &kept {
                let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
                line.push(b'\n');
                file.write_all(&line)?;
            }
            file.sync_all()?;
        }
        std::fs::rename(&temporary, path)?;
        let file = open_append(path, false)?;
        Ok(Self { path: path.to_owned(), state: Mutex::new(State { results, file }) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Each update is one insert plus one append: a panicked holder leaves both consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The recorded result of `job_id`, if the job finished before.
    pub fn result(&self, job_id: &str) -> Option<pb::JobResult> {
        self.state().results.get(job_id).cloned()
    }

    /// Records a finished job durably. Retryable failures are not recorded.
    pub fn record(&self, result: &pb::JobResult) -> std::io::Result<()> {
        if let Some(pb::job_result::Outcome::Failure(failure)) = &result.outcome {
            if failure.retryable {
                return Ok(());
            }
        }
        let mut stored = result.clone();
        if let Some(pb::job_result::Outcome::Success(success)) = &mut stored.outcome {
            // A generated password is delivered once, never replayed from disk.
            if !success.sealed_secret.is_empty() {
                success.sealed_secret.clear();
                success.secret_encoding = pb::SecretEncoding::None as i32;
                success
                    .notes
                    .push("this job was already answered once; its generated password is not sent again".into());
            }
        }
        let entry = Entry {
            job_id: result.job_id.clone(),
            finished_ms: now_ms(),
            result: base64::engine::general_purpose::STANDARD.encode(stored.encode_to_vec()),
        };
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut state = self.state();
        state.file.write_all(&line)?;
        state.file.sync_data()?;
        state.results.insert(result.job_id.clone(), stored);
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn success(id: &str) -> pb::JobResult {
        pb::JobResult {
            job_id: id.into(),
            outcome: Some(pb::job_result::Outcome::Success(pb::JobSuccess {
                account_dn: "CN=a".into(),
                verified: true,
                sealed_secret: b"not-for-disk".to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn finished_jobs_survive_reopening_without_their_secret() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("journal.jsonl");
        let journal = Journal::open(&path).expect("open");
        journal.record(&success("j1")).expect("record");
        let retryable = pb::JobResult {
            job_id: "j2".into(),
            outcome: Some(pb::job_result::Outcome::Failure(pb::JobFailure { retryable: true, ..Default::default() })),
        };
        journal.record(&retryable).expect("record");
        drop(journal);
        let journal = Journal::open(&path).expect("reopen");
        let replayed = journal.result("j1").expect("remembered");
        let Some(pb::job_result::Outcome::Success(s)) = replayed.outcome else { panic!("success expected") };
        assert!(s.sealed_secret.is_empty());
        assert!(journal.result("j2").is_none(), "retryable failures are not final");
        assert!(!std::fs::read_to_string(&path).expect("read").contains("not-for-disk"));
    }

    #[test]
    fn old_and_torn_lines_are_dropped_on_open() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("journal.jsonl");
        let old = Entry { job_id: "old".into(), finished_ms: 0, result: String::new() };
        std::fs::write(&path, format!("{}\n{{\"job_id\": \"torn", serde_json::to_string(&old).expect("json")))
            .expect("write");
        let journal = Journal::open(&path).expect("open");
        assert!(journal.result("old").is_none());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "");
    }
}
