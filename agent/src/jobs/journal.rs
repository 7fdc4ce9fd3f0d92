//! The durable journal of finished jobs: a redelivered job (after a lost result or a relay restart)
//! is answered from here instead of being applied twice.
//!
//! JSON lines `{"job_id", "finished_ms", "result", "reissue"}` with the result protobuf-encoded
//! (base64). Only final outcomes are recorded (successes and failures that trying again would not
//! change), and never a secret anyone but the requester can read. Entries older than [`RETENTION`]
//! are dropped when the journal is opened.
//!
//! A generated password sealed to the requester's public key is ciphertext only the requester can
//! open: it is journaled and replayed with the result, so a redelivery after a lost result still
//! hands the requester the password that was set. A password that left in plaintext over the link,
//! or an initial password whose opening key only the lost result carried, is never written to disk:
//! nobody can ever read the password that was set. Reporting success without it would leave an
//! account with a password nobody holds; such an entry is marked `reissue` and a redelivery runs
//! the job again ([`Recorded::Reissue`]): a fresh password replaces the unread one, which is
//! audited. The relay's attempt limit bounds how often that can happen. (While the agent runs, an
//! unacknowledged result is kept in memory and sent again on the next stream, so this is only
//! needed after the agent itself restarted.)

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// The result carried a secret only it could deliver: a redelivery runs the job again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    reissue: bool,
}

/// What the journal knows about a redelivered job.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// Answer with this result; do not apply the job again.
    Answer(pb::JobResult),
    /// The job set an initial password whose result (and key) never arrived: run it again so a
    /// fresh password replaces the one nobody can read.
    Reissue,
}

/// The journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    results: HashMap<String, Recorded>,
    file: File,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Each update is one insert plus one append: a panicked holder leaves both consistent.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
            if entry.reissue {
                results.insert(entry.job_id.clone(), Recorded::Reissue);
            } else if let Some(result) = decoded {
                results.insert(entry.job_id.clone(), Recorded::Answer(result));
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
        Ok(Self { path: path.to_owned(), state: Arc::new(Mutex::new(State { results, file })) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// What a redelivery of `job_id` gets, if the job finished before.
    pub fn lookup(&self, job_id: &str) -> Option<Recorded> {
        self.state().results.get(job_id).cloned()
    }

    /// The recorded result of `job_id` to answer a redelivery with, if the job finished before and
    /// is not to be run again.
    pub fn result(&self, job_id: &str) -> Option<pb::JobResult> {
        match self.lookup(job_id) {
            Some(Recorded::Answer(result)) => Some(result),
            Some(Recorded::Reissue) | None => None,
        }
    }

    /// Records a finished job durably (the sync to disk on a blocking thread). Retryable failures
    /// are not recorded.
    pub async fn record(&self, result: &pb::JobResult) -> std::io::Result<()> {
        if let Some(pb::job_result::Outcome::Failure(failure)) = &result.outcome {
            if failure.retryable {
                return Ok(());
            }
        }
        let mut stored = result.clone();
        let mut reissue = false;
        if let Some(pb::job_result::Outcome::Success(success)) = &mut stored.outcome {
            // Only a sealed box (readable by the requester alone) reaches the disk; a plaintext
            // password or an initial password's key never does, and their jobs are issued afresh.
            let sealed_box = success.secret_encoding() == pb::SecretEncoding::SealedBox;
            reissue = !success.secret_key.is_empty() || (!success.sealed_secret.is_empty() && !sealed_box);
            zeroize::Zeroize::zeroize(&mut success.secret_key);
            if !sealed_box {
                zeroize::Zeroize::zeroize(&mut success.sealed_secret);
                success.secret_encoding = pb::SecretEncoding::None as i32;
            }
        }
        let entry = Entry {
            job_id: result.job_id.clone(),
            finished_ms: now_ms(),
            result: base64::engine::general_purpose::STANDARD.encode(stored.encode_to_vec()),
            reissue,
        };
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let recorded = if reissue { Recorded::Reissue } else { Recorded::Answer(stored) };
        let (state, job_id) = (Arc::clone(&self.state), result.job_id.clone());
        tokio::task::spawn_blocking(move || {
            let mut state = lock(&state);
            state.file.write_all(&line)?;
            state.file.sync_data()?;
            state.results.insert(job_id, recorded);
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
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
                secret_encoding: pb::SecretEncoding::Plaintext as i32,
                ..Default::default()
            })),
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn finished_jobs_survive_reopening_and_a_plaintext_password_never_reaches_the_disk() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("journal.jsonl");
        let journal = Journal::open(&path).expect("open");
        journal.record(&success("j1")).await.expect("record");
        let sealed = pb::JobResult {
            job_id: "j0".into(),
            outcome: Some(pb::job_result::Outcome::Success(pb::JobSuccess {
                account_dn: "CN=a".into(),
                sealed_secret: b"sealed-box-bytes".to_vec(),
                secret_encoding: pb::SecretEncoding::SealedBox as i32,
                ..Default::default()
            })),
            attempt: 1,
        };
        journal.record(&sealed).await.expect("record");
        let retryable = pb::JobResult {
            job_id: "j2".into(),
            outcome: Some(pb::job_result::Outcome::Failure(pb::JobFailure { retryable: true, ..Default::default() })),
            attempt: 1,
        };
        journal.record(&retryable).await.expect("record");
        drop(journal);
        let journal = Journal::open(&path).expect("reopen");
        assert_eq!(journal.lookup("j1"), Some(Recorded::Reissue), "nobody can read it: issue a fresh one");
        let replayed = journal.result("j0").expect("remembered");
        let Some(pb::job_result::Outcome::Success(s)) = replayed.outcome else { panic!("success expected") };
        assert_eq!(s.sealed_secret, b"sealed-box-bytes", "a sealed box is replayed to its requester");
        assert_eq!(s.secret_encoding(), pb::SecretEncoding::SealedBox);
        assert!(journal.result("j2").is_none(), "retryable failures are not final");
        assert!(!std::fs::read_to_string(&path).expect("read").contains("not-for-disk"));
    }

    #[test]
    fn old_and_torn_lines_are_dropped_on_open() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("journal.jsonl");
        let old = Entry { job_id: "old".into(), finished_ms: 0, result: String::new(), reissue: false };
        std::fs::write(&path, format!("{}\n{{\"job_id\": \"torn", serde_json::to_string(&old).expect("json")))
            .expect("write");
        let journal = Journal::open(&path).expect("open");
        assert!(journal.result("old").is_none());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "");
    }

    #[tokio::test]
    async fn an_initial_password_is_reissued_and_its_key_never_reaches_the_disk() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("journal.jsonl");
        let journal = Journal::open(&path).expect("open");
        let initial = pb::JobResult {
            job_id: "j3".into(),
            outcome: Some(pb::job_result::Outcome::Success(pb::JobSuccess {
                account_dn: "CN=new hire".into(),
                verified: true,
                sealed_secret: b"ciphertext-not-for-disk".to_vec(),
                secret_encoding: pb::SecretEncoding::Aes256Gcm as i32,
                secret_key: b"key-not-for-disk-key-not-for-dis".to_vec(),
                ..Default::default()
            })),
            attempt: 1,
        };
        journal.record(&initial).await.expect("record");
        assert_eq!(journal.lookup("j3"), Some(Recorded::Reissue));
        assert!(journal.result("j3").is_none(), "never answered without its secret");
        drop(journal);
        let journal = Journal::open(&path).expect("reopen");
        assert_eq!(journal.lookup("j3"), Some(Recorded::Reissue), "survives reopening");
        let text = std::fs::read_to_string(&path).expect("read");
        let entry: Entry = serde_json::from_str(text.trim()).expect("one entry");
        assert!(entry.reissue);
        let bytes = base64::engine::general_purpose::STANDARD.decode(&entry.result).expect("base64");
        let stored = pb::JobResult::decode(bytes.as_slice()).expect("protobuf");
        let Some(pb::job_result::Outcome::Success(s)) = stored.outcome else { panic!("success expected") };
        assert!(s.sealed_secret.is_empty() && s.secret_key.is_empty(), "no ciphertext or key on disk");
        assert_eq!(s.account_dn, "CN=new hire");
    }
}
