//! Kerberos fixtures for integration tests of the agent's `bind = "kerberos"` against the KDC of
//! the throwaway Samba AD DC (realm `PWRELAY.TEST`, KDC on 127.0.0.1:88): the realm's client
//! settings, a service account's credentials, and a way to run a test with them.
//!
//! `deploy/dev/samba-dc.sh start` prepares the DC (SASL binds inside TLS allowed, the `ldap/`
//! service principal name of its host) and the client side (a `krb5.conf` in the DC's directory,
//! the DC's host name in `/etc/hosts`); [`realm`] runs it and checks the result.
//!
//! The Kerberos library takes its settings and credentials from process-wide environment variables
//! (`KRB5_CONFIG`, `KRB5CCNAME`, `KRB5_CLIENT_KTNAME`). A test cannot set them in its own process:
//! `std::env::set_var` is `unsafe` in edition 2024 (the workspace forbids `unsafe`), and the other
//! tests of the binary run on threads of the same process. So a test prepares credentials here and
//! runs its Kerberos part with [`run_in_child`]: in a child process of its own test binary, with
//! those variables set for the child only.

use std::ffi::OsString;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{TestUser, repo_root};

/// The environment variable that marks a child process started by [`run_in_child`].
const CHILD_MARKER: &str = "PWRELAY_TEST_KERBEROS_CHILD";

/// The Kerberos realm of the test DC, as a client sees it.
#[derive(Debug, Clone)]
pub struct TestRealm {
    /// `PWRELAY.TEST`.
    pub realm: String,
    /// The DC's host name, `dc1.pwrelay.test` (its service principal is `ldap/dc1.pwrelay.test`).
    pub dc_host: String,
    /// `ldaps://dc1.pwrelay.test:636`.
    pub ldaps_url: String,
    /// `ldap://dc1.pwrelay.test:389` (StartTLS).
    pub ldap_url: String,
    /// The `krb5.conf` that points at the DC's KDC (for `KRB5_CONFIG`).
    pub krb5_config: PathBuf,
    /// The DC's directory (its `etc/smb.conf` lets `samba-tool` read the keys).
    dc_dir: PathBuf,
}

/// Kerberos credentials of one account for a child process: the variables to set.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// `<sAMAccountName>@<REALM>`, or empty for [`TestRealm::no_credentials`].
    pub principal: String,
    env: Vec<(String, OsString)>,
}

impl ClientCredentials {
    /// `KRB5_CONFIG`, `KRB5CCNAME` and `KRB5_CLIENT_KTNAME` for the child.
    pub fn env(&self) -> &[(String, OsString)] {
        &self.env
    }
}

/// The realm of the test DC, set up on first use: starts the DC if needed (through
/// [`super::dc`]) and runs `deploy/dev/samba-dc.sh start` (for a running DC it only prepares the
/// client side, unless the DC was started by an older script without the Kerberos settings: then
/// it restarts it), then checks the result, including that the DC's host name resolves to
/// 127.0.0.1. Panics (failing the test) with what to do when something is missing.
pub fn realm() -> &'static TestRealm {
    static REALM: OnceLock<TestRealm> = OnceLock::new();
    REALM.get_or_init(|| {
        let dc = super::dc();
        let script = repo_root().join("deploy/dev/samba-dc.sh");
        let started = Command::new("bash").arg(&script).arg("start").output().expect("samba-dc.sh start runs");
        assert!(
            started.status.success(),
            "samba-dc.sh start failed: {}{}",
            String::from_utf8_lossy(&started.stdout),
            String::from_utf8_lossy(&started.stderr)
        );
        let output = Command::new("bash").arg(&script).arg("env").output().expect("samba-dc.sh env runs");
        let env: std::collections::HashMap<String, String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let var = |k: &str| env.get(k).cloned().unwrap_or_else(|| panic!("samba-dc.sh env prints {k}"));
        let dc_host = var("PWRELAY_TEST_DC_HOST");
        let krb5_config = PathBuf::from(var("PWRELAY_TEST_KRB5_CONFIG"));
        assert!(
            krb5_config.is_file(),
            "{} is missing; run `sudo deploy/dev/samba-dc.sh start`, which writes it",
            krb5_config.display()
        );
        let dc_dir = PathBuf::from(var("PWRELAY_TEST_DC_DIR"));
        let smb_conf = std::fs::read_to_string(dc_dir.join("etc/smb.conf")).unwrap_or_default();
        assert!(
            smb_conf.contains("ldap server require strong auth = allow_sasl_over_tls"),
            "the running DC was started without `ldap server require strong auth = allow_sasl_over_tls`, so it \
             refuses SASL binds over TLS; run `sudo deploy/dev/samba-dc.sh start`, which restarts such a DC"
        );
        let resolved: Vec<_> = (dc_host.as_str(), 636).to_socket_addrs().map(Iterator::collect).unwrap_or_default();
        assert!(
            resolved.iter().any(|a: &std::net::SocketAddr| a.ip().is_loopback()),
            "{dc_host} does not resolve to 127.0.0.1 ({resolved:?}); run `sudo deploy/dev/samba-dc.sh start`, \
             which adds it to /etc/hosts"
        );
        TestRealm {
            realm: dc.domain.as_str().to_uppercase(),
            ldaps_url: format!("ldaps://{dc_host}:636"),
            ldap_url: format!("ldap://{dc_host}:389"),
            dc_host,
            krb5_config,
            dc_dir,
        }
    })
}

impl TestRealm {
    /// Kerberos credentials of `account`, kept in `dir`.
    ///
    /// As root: the account's keys exported from the DC's database into a keytab
    /// (`samba-tool domain exportkeytab`) named by `KRB5_CLIENT_KTNAME`, with an empty ticket cache
    /// of its own: the GSSAPI library gets the tickets itself, as a gMSA's host does, with no
    /// password anywhere. Otherwise (no access to the database): a ticket obtained with `kinit` and
    /// the account's password (on its standard input) into the ticket cache `KRB5CCNAME`.
    pub fn credentials(&self, account: &TestUser, dir: &Path) -> ClientCredentials {
        let principal = format!("{}@{}", account.sam, self.realm);
        let ccache = dir.join("ccache");
        let keytab = dir.join("client.keytab");
        let sam_ldb = self.dc_dir.join("private/sam.ldb");
        if std::fs::File::open(&sam_ldb).is_ok() {
            let output = Command::new("samba-tool")
                .args(["domain", "exportkeytab"])
                .arg(&keytab)
                .arg(format!("--principal={}", account.sam))
                .arg("-s")
                .arg(self.dc_dir.join("etc/smb.conf"))
                .output()
                .unwrap_or_else(|e| panic!("samba-tool cannot be run: {e}"));
            assert!(
                output.status.success() && keytab.is_file(),
                "exporting the keytab of {principal} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        } else {
            let mut kinit = Command::new("kinit")
                .arg(&principal)
                .env("KRB5_CONFIG", &self.krb5_config)
                .env("KRB5CCNAME", file_name(&ccache))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("kinit cannot be run (install krb5-user): {e}"));
            if let Some(mut stdin) = kinit.stdin.take() {
                use std::io::Write;
                // A closed pipe shows up as kinit's failure below.
                let _ = writeln!(stdin, "{}", account.password.expose_secret());
            }
            let output = kinit.wait_with_output().expect("kinit finishes");
            assert!(
                output.status.success(),
                "kinit {principal} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        ClientCredentials { principal, env: self.client_env(&ccache, &keytab) }
    }

    /// An environment with no Kerberos credentials: a ticket cache and a client keytab that do not
    /// exist (in `dir`).
    pub fn no_credentials(&self, dir: &Path) -> ClientCredentials {
        ClientCredentials {
            principal: String::new(),
            env: self.client_env(&dir.join("no-ccache"), &dir.join("no-client.keytab")),
        }
    }

    fn client_env(&self, ccache: &Path, keytab: &Path) -> Vec<(String, OsString)> {
        vec![
            ("KRB5_CONFIG".into(), self.krb5_config.clone().into_os_string()),
            ("KRB5CCNAME".into(), file_name(ccache)),
            ("KRB5_CLIENT_KTNAME".into(), file_name(keytab)),
        ]
    }
}

/// `FILE:<path>`, the form of a ticket cache or keytab name.
fn file_name(path: &Path) -> OsString {
    let mut name = OsString::from("FILE:");
    name.push(path);
    name
}

/// Runs the test `name` (its full path in the test binary, e.g. `child_resets_a_password`) of the
/// current test binary in a child process with `env` added to a copy of this process's environment
/// (less any Kerberos variables of its own), and panics with the child's output unless exactly
/// that test ran and passed. Mark the child test `#[ignore]`, so the ordinary run skips it, and
/// read its inputs with [`child_var`].
pub fn run_in_child(name: &str, env: &[(String, OsString)]) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = Command::new(exe)
        .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env_remove("KRB5_CONFIG")
        .env_remove("KRB5CCNAME")
        .env_remove("KRB5_CLIENT_KTNAME")
        .env_remove("KRB5_KTNAME")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(CHILD_MARKER, name)
        .output()
        .unwrap_or_else(|e| panic!("the test binary cannot be started again: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child test {name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// In a child test started by [`run_in_child`]: the input variable `name` its parent set. Panics
/// when the test was started in any other way (e.g. `cargo test -- --ignored`).
pub fn child_var(name: &str) -> String {
    assert!(
        std::env::var_os(CHILD_MARKER).is_some(),
        "this test runs only in a child process started by its parent test (testkit::kerberos::run_in_child)"
    );
    std::env::var(name).unwrap_or_else(|_| panic!("the parent test sets {name}"))
}
