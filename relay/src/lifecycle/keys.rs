//! Link keys between the agent's result and the delivery: in memory only.
//!
//! An `initial_password` result carries the ciphertext (which the store keeps) and its fresh
//! AES-256 key (which it never sees). The agent session puts the key here, under the job and the
//! attempt that produced it, *before* it records the result, so a job seen as final always has its
//! key here; it takes the key back if the result turns out not to be the one that finished the job.
//! The delivery takes the key of the job's final attempt out, puts it into the link's fragment and
//! drops it. A key that is not taken within [`KEEP_FOR`] is dropped too. After a restart the keys
//! are gone, unless the agent sends its unacknowledged result again; otherwise the affected
//! requests fail cleanly (see [`super::worker`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pwrelay_shared::secret::SecretBytes;

use crate::jobs::JobId;

/// How long an untaken key is kept.
pub const KEEP_FOR: Duration = Duration::from_secs(3600);

/// Keys by job.
#[derive(Default)]
pub struct LinkKeys {
    keys: Mutex<HashMap<(JobId, u32), (SecretBytes, Instant)>>,
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKeys([redacted])")
    }
}

impl LinkKeys {
    /// Keeps `key` for `attempt` of `job` until it is taken.
    pub fn put(&self, job: JobId, attempt: u32, key: SecretBytes) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.retain(|_, (_, at)| at.elapsed() < KEEP_FOR);
        keys.insert((job, attempt), (key, Instant::now()));
    }

    /// Takes the key of `attempt` of `job` out (it is no longer kept here).
    pub fn take(&self, job: JobId, attempt: u32) -> Option<SecretBytes> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(&(job, attempt)).map(|(key, _)| key)
    }
}
