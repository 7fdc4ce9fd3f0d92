//! The throwaway Samba AD DC: its faults (through `deploy/dev/samba-dc.sh halt | restart | pause |
//! resume`, which keep the directory) and the checks of the directory itself (real LDAP binds as
//! the test accounts). Every LDAP call has a timeout: the DC may be paused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings};
use pwrelay_shared::testkit::TestDc;
use pwrelay_shared::tls::{self, TrustAnchors};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dev/samba-dc.sh")
}

/// Runs `samba-dc.sh <command>` (with the caller's `DC_DIR`), panicking with its output on failure.
pub(crate) async fn dc_script(command: &str) {
    let output = tokio::process::Command::new("bash")
        .arg(script())
        .arg(command)
        .output()
        .await
        .unwrap_or_else(|e| panic!("samba-dc.sh {command} cannot be run: {e}"));
    assert!(
        output.status.success(),
        "samba-dc.sh {command} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What the DC is doing, as the fault injector left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DcState {
    Running,
    Paused,
    Halted,
}

/// The DC's faults.
#[derive(Debug)]
pub(crate) struct DcControl {
    pub(crate) state: DcState,
}

impl DcControl {
    pub(crate) fn new() -> Self {
        Self { state: DcState::Running }
    }

    pub(crate) async fn pause(&mut self) {
        dc_script("pause").await;
        self.state = DcState::Paused;
    }

    pub(crate) async fn resume(&mut self) {
        if self.state == DcState::Paused {
            dc_script("resume").await;
            self.state = DcState::Running;
        }
    }

    pub(crate) async fn halt(&mut self) {
        dc_script("halt").await;
        self.state = DcState::Halted;
    }

    /// Starts a halted DC again (and waits for LDAPS).
    pub(crate) async fn restart(&mut self) {
        dc_script("restart").await;
        self.state = DcState::Running;
    }

    /// Running again, whatever the last fault left.
    pub(crate) async fn heal(&mut self) {
        match self.state {
            DcState::Running => {}
            DcState::Paused => self.resume().await,
            DcState::Halted => self.restart().await,
        }
    }
}

/// How a bind as an account ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bind {
    /// The password is the account's (for `must_change` accounts: AD's `data 773`, password right
    /// but to be changed).
    Matches,
    /// Invalid credentials.
    Refused,
    /// No answer or another error.
    Error(String),
}

/// Binds over LDAPS as `dn` with `password`; bounded by `limit`.
pub(crate) async fn bind(dc: &TestDc, dn: &str, password: &str, limit: Duration) -> Bind {
    let attempt = async {
        let anchors = TrustAnchors::from_file(&dc.ca_file).map_err(|e| format!("DC CA: {e}"))?;
        let config = tls::ldap_client(&anchors).map_err(|e| format!("TLS: {e}"))?;
        let settings = LdapConnSettings::new().set_config(config).set_conn_timeout(limit);
        let (conn, mut ldap) =
            LdapConnAsync::with_settings(settings, &dc.ldaps_url).await.map_err(|e| format!("connect: {e}"))?;
        ldap3::drive!(conn);
        let result = ldap.simple_bind(dn, password).await.map_err(|e| format!("bind: {e}"))?;
        let _ = ldap.unbind().await;
        Ok::<_, String>(result)
    };
    match tokio::time::timeout(limit, attempt).await {
        Err(_) => Bind::Error(format!("no answer within {limit:?}")),
        Ok(Err(e)) => Bind::Error(e),
        Ok(Ok(result)) if result.rc == 0 => Bind::Matches,
        Ok(Ok(result)) if result.rc == 49 && result.text.contains("data 773") => Bind::Matches,
        Ok(Ok(result)) if result.rc == 49 => Bind::Refused,
        Ok(Ok(result)) => Bind::Error(format!("LDAP result {}: {}", result.rc, result.text)),
    }
}

/// [`bind`], retried while the DC gives no answer (it may still be starting after a fault).
pub(crate) async fn bind_settled(dc: &TestDc, dn: &str, password: &str) -> Bind {
    let mut last = Bind::Error("not tried".into());
    for _ in 0..5 {
        last = bind(dc, dn, password, Duration::from_secs(10)).await;
        if !matches!(last, Bind::Error(_)) {
            return last;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    last
}
