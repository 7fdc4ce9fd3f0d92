//! Fixtures for integration tests (feature `testkit`): the throwaway Samba AD DC of
//! `deploy/dev/samba-dc.sh`, test users, LDAP binds, and test certificates.
//!
//! [`dc`] starts the DC on first use when it is not already running (the test command starts it
//! beforehand), so `cargo test` alone works on a machine where `deploy/dev/install-deps.sh` ran.

pub mod directory_admin;
pub mod dns;
pub mod kerberos;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use crate::domain::{AgentName, DomainName};
use crate::identity::AgentIdentity;
use crate::pki::{self, CertificateAuthority, files};
use crate::secret::SecretString;
use crate::tls::{self, TrustAnchors};

/// The running test DC.
#[derive(Debug, Clone)]
pub struct TestDc {
    /// `ldaps://127.0.0.1:636`.
    pub ldaps_url: String,
    /// `ldap://127.0.0.1:389` (StartTLS).
    pub ldap_url: String,
    /// The CA file of the DC's certificate.
    pub ca_file: PathBuf,
    /// The AD domain (`pwrelay.test`).
    pub domain: DomainName,
    /// `DC=pwrelay,DC=test`.
    pub base_dn: String,
    /// The domain administrator.
    pub admin_dn: String,
    /// Its password.
    pub admin_password: SecretString,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The test DC, started on first use if needed. Panics (failing the test) with what to do when it
/// cannot be started.
pub fn dc() -> &'static TestDc {
    static DC: OnceLock<TestDc> = OnceLock::new();
    DC.get_or_init(|| {
        let script = repo_root().join("deploy/dev/samba-dc.sh");
        let running = Command::new("bash").arg(&script).arg("status").status().map(|s| s.success()).unwrap_or(false);
        if !running {
            let started = Command::new("bash").arg(&script).arg("start").status();
            assert!(
                started.map(|s| s.success()).unwrap_or(false),
                "the throwaway Samba AD DC could not be started; run `sudo deploy/dev/install-deps.sh` and \
                 `sudo deploy/dev/samba-dc.sh start`, or use `deploy/dev/test.sh`"
            );
        }
        let output = Command::new("bash").arg(&script).arg("env").output().expect("samba-dc.sh env runs");
        let env: std::collections::HashMap<String, String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let var = |k: &str| env.get(k).cloned().unwrap_or_else(|| panic!("samba-dc.sh env prints {k}"));
        TestDc {
            ldaps_url: "ldaps://127.0.0.1:636".into(),
            ldap_url: "ldap://127.0.0.1:389".into(),
            ca_file: PathBuf::from(var("PWRELAY_TEST_DC_DIR")).join("tls/ca.pem"),
            domain: DomainName::parse(&var("PWRELAY_TEST_REALM")).expect("realm is a domain name"),
            base_dn: var("PWRELAY_TEST_BASE_DN"),
            admin_dn: var("PWRELAY_TEST_ADMIN_DN"),
            admin_password: SecretString::new(var("PWRELAY_TEST_ADMIN_PASS")),
        }
    })
}

/// A user created for one test.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// sAMAccountName.
    pub sam: String,
    /// userPrincipalName.
    pub upn: String,
    /// Distinguished name.
    pub dn: String,
    /// The initial password.
    pub password: SecretString,
}

/// What a bind attempt returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOutcome {
    /// LDAP result code (0 = success, 49 = invalid credentials).
    pub rc: u32,
    /// Diagnostic text (AD puts `data 52e` / `data 773` here).
    pub text: String,
}

impl BindOutcome {
    /// Whether the bind succeeded.
    pub fn ok(&self) -> bool {
        self.rc == 0
    }
}

impl TestDc {
    async fn connect(&self) -> ldap3::Ldap {
        let anchors = TrustAnchors::from_file(&self.ca_file).expect("DC CA loads");
        let settings = LdapConnSettings::new().set_config(tls::ldap_client(&anchors).expect("tls config"));
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.ldaps_url).await.expect("LDAPS connects");
        ldap3::drive!(conn);
        ldap
    }

    async fn admin(&self) -> ldap3::Ldap {
        let mut ldap = self.connect().await;
        ldap.simple_bind(&self.admin_dn, self.admin_password.expose_secret())
            .await
            .and_then(|r| r.success())
            .expect("administrator binds");
        ldap
    }

    /// Creates an enabled user `<prefix>NNN...` in CN=Users with a compliant password.
    pub async fn create_user(&self, prefix: &str) -> TestUser {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let unique = format!("{}{}{n}", std::process::id() % 100_000, nanos() % 100_000);
        let sam: String = format!("{prefix}{unique}").chars().take(20).collect();
        let upn = format!("{sam}@{}", self.domain);
        let dn = format!("CN={sam},CN=Users,{}", self.base_dn);
        let password = SecretString::from(format!("Init!{unique}aB9"));
        let quoted: Vec<u8> =
            format!("\"{}\"", password.expose_secret()).encode_utf16().flat_map(u16::to_le_bytes).collect();
        let mut ldap = self.admin().await;
        let attrs: Vec<(Vec<u8>, std::collections::HashSet<Vec<u8>>)> = vec![
            (b"objectClass".to_vec(), [b"user".to_vec()].into()),
            (b"sAMAccountName".to_vec(), [sam.as_bytes().to_vec()].into()),
            (b"userPrincipalName".to_vec(), [upn.as_bytes().to_vec()].into()),
            (b"unicodePwd".to_vec(), [quoted].into()),
            (b"userAccountControl".to_vec(), [b"512".to_vec()].into()),
        ];
        ldap.add(&dn, attrs).await.and_then(|r| r.success()).expect("test user is created");
        let _ = ldap.unbind().await;
        TestUser { sam, upn, dn, password }
    }

    /// Binds as `dn` with `password` over LDAPS.
    pub async fn bind(&self, dn: &str, password: &str) -> BindOutcome {
        let mut ldap = self.connect().await;
        let result = ldap.simple_bind(dn, password).await.expect("bind gets an answer");
        let _ = ldap.unbind().await;
        BindOutcome { rc: result.rc, text: result.text }
    }

    /// Reads one attribute of `dn` as the administrator.
    pub async fn attribute(&self, dn: &str, attribute: &str) -> Option<String> {
        let mut ldap = self.admin().await;
        let (entries, _) =
            ldap.search(dn, Scope::Base, "(objectClass=*)", vec![attribute]).await.ok()?.success().ok()?;
        let _ = ldap.unbind().await;
        entries
            .into_iter()
            .map(SearchEntry::construct)
            .find_map(|e| e.attrs.get(attribute).and_then(|v| v.first().cloned()))
    }
}

impl TestDc {
    /// The objectGUID of `dn` in its text form.
    pub async fn object_guid(&self, dn: &str) -> String {
        let mut ldap = self.admin().await;
        let (entries, _) = ldap
            .search(dn, Scope::Base, "(objectClass=*)", vec!["objectGUID"])
            .await
            .and_then(|r| r.success())
            .expect("objectGUID is readable");
        let _ = ldap.unbind().await;
        let wire = entries
            .into_iter()
            .map(SearchEntry::construct)
            .find_map(|e| e.bin_attrs.get("objectGUID").and_then(|v| v.first().cloned()))
            .expect("the entry has an objectGUID");
        let b: [u8; 16] = wire.try_into().expect("a GUID has 16 bytes");
        format!(
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// A test PKI in a directory: CA, relay link certificate for `localhost`/`127.0.0.1`.
#[derive(Debug)]
pub struct TestPki {
    /// The directory.
    pub dir: PathBuf,
    ca: CertificateAuthority,
}

impl TestPki {
    /// Creates the CA and the relay certificate in `dir`.
    pub fn create(dir: &Path) -> Self {
        let (ca, ca_files) = CertificateAuthority::generate("test agent CA", 2).expect("CA");
        let relay = ca.issue_server(&["localhost".into(), "127.0.0.1".into()], 2).expect("relay certificate");
        pki::write_public(&dir.join(files::CA_CERT), &ca_files.cert_pem, true).expect("write");
        pki::write_private(&dir.join(files::CA_KEY), &ca_files.key_pem, true).expect("write");
        pki::write_public(&dir.join(files::RELAY_CERT), &relay.cert_pem, true).expect("write");
        pki::write_private(&dir.join(files::RELAY_KEY), &relay.key_pem, true).expect("write");
        Self { dir: dir.to_owned(), ca }
    }

    /// Issues an agent certificate into `out` (agent.pem, agent.key, ca.pem).
    pub fn issue_agent(&self, name: &str, domains: &[&DomainName], out: &Path) {
        let identity = AgentIdentity {
            name: AgentName::parse(name).expect("agent name"),
            domains: domains.iter().map(|d| (*d).clone()).collect(),
        };
        let issued = self.ca.issue_agent(&identity, 2).expect("agent certificate");
        pki::write_public(&out.join(files::AGENT_CERT), &issued.cert_pem, true).expect("write");
        pki::write_private(&out.join(files::AGENT_KEY), &issued.key_pem, true).expect("write");
        pki::write_public(&out.join(files::CA_CERT), self.ca.cert_pem(), true).expect("write");
    }
}
