//! The `pwrelay` binary's operator commands, run as a real process.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use pwrelay_shared::identity::AgentIdentity;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

fn pwrelay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pwrelay")).args(args).output().expect("pwrelay runs")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("file exists").permissions().mode() & 0o777
}

#[test]
fn pki_init_and_issue_agent_write_usable_certificates_with_private_keys_0600() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = dir.path().join("pki");
    let pki_arg = pki.to_str().expect("utf-8 path");
    let out =
        pwrelay(&["pki", "init", "--dir", pki_arg, "--relay-name", "relay.example.com", "--relay-name", "10.1.2.3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&pki.join("ca.key")), 0o600);
    assert_eq!(mode(&pki.join("relay.key")), 0o600);

    let again = pwrelay(&["pki", "init", "--dir", pki_arg, "--relay-name", "x"]);
    assert!(!again.status.success(), "an existing PKI is never overwritten");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a PKI"));

    let agent = dir.path().join("agent");
    let out = pwrelay(&[
        "pki",
        "issue-agent",
        "--ca-dir",
        pki_arg,
        "--name",
        "hq-1",
        "--domain",
        "corp.example.com",
        "--domain",
        "emea.corp.example.com",
        "--out",
        agent.to_str().expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&agent.join("agent.key")), 0o600);
    let der = CertificateDer::from_pem_file(agent.join("agent.pem")).expect("certificate");
    let identity = AgentIdentity::from_certificate_der(&der).expect("identity");
    assert_eq!(identity.name.as_str(), "hq-1");
    let domains: Vec<&str> = identity.domains.iter().map(|d| d.as_str()).collect();
    assert_eq!(domains, ["corp.example.com", "emea.corp.example.com"]);

    let bad =
        pwrelay(&["pki", "issue-agent", "--ca-dir", pki_arg, "--name", "a b", "--domain", "x.test", "--out", "/tmp/x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid agent name"));
}

#[test]
fn clients_add_prints_a_token_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "domains = [\"corp.example.com\"]\n[api]\ncert_file = \"a\"\nkey_file = \"b\"\n[link]\ncert_file = \"c\"\n\
         key_file = \"d\"\nagent_ca_file = \"e\"\n[store]\npath = \"relay.db\"\nkey_file = \"store.key\"\n",
    )
    .expect("config");
    let out = pwrelay(&["clients", "add", "cyberark-prod", "--config", config.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
    assert!(token.starts_with("pwr_") && token.len() > 40, "{token}");
    let db = std::fs::read(dir.path().join("relay.db")).expect("database");
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()), "the token itself is not stored");
    let twice = pwrelay(&["clients", "add", "cyberark-prod", "--config", config.to_str().expect("utf-8")]);
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already exists"));
}

#[test]
fn serve_with_a_bad_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "domains = [\"corp.example.com\"]\n[api]\ncert_file = \"a\"\nkey_file = \"b\"\nlisten = \"nope\"\n",
    )
    .expect("config");
    let out = pwrelay(&["serve", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen") || stderr.contains("link"), "{stderr}");
    let missing = pwrelay(&["serve", "--config", "/nonexistent/relay.toml"]);
    assert_eq!(missing.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/relay.toml"));
}

#[test]
fn store_key_generate_writes_a_0600_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("store.key");
    let out = pwrelay(&["store-key", "generate", "--out", key.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&key), 0o600);
    assert!(pwrelay_relay::seal::Sealer::from_key_file(&key).is_ok());
    let again = pwrelay(&["store-key", "generate", "--out", key.to_str().expect("utf-8")]);
    assert!(!again.status.success(), "an existing key is never overwritten");
}

#[test]
fn help_explains_every_command() {
    let out = pwrelay(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["serve", "pki", "clients", "store-key", "password"] {
        assert!(text.contains(command), "--help lists {command}");
    }
}

#[test]
fn client_tokens_can_be_rotated_and_revoked_and_scopes_are_validated() {
    use pwrelay_relay::store::Store as _;
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "domains = [\"corp.example.com\"]\n[api]\ncert_file = \"a\"\nkey_file = \"b\"\n[link]\ncert_file = \"c\"\n\
         key_file = \"d\"\nagent_ca_file = \"e\"\n[store]\npath = \"relay.db\"\nkey_file = \"store.key\"\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf-8");
    let token = |out: Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        pwrelay_shared::secret::SecretString::new(String::from_utf8(out.stdout).expect("utf-8").trim().to_owned())
    };
    let first = token(pwrelay(&[
        "clients",
        "add",
        "pam",
        "--operation",
        "verify",
        "--domain",
        "corp.example.com",
        "--config",
        config,
    ]));
    let second = token(pwrelay(&["clients", "rotate", "pam", "--config", config]));
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let store = pwrelay_relay::store::sqlite::SqliteStore::open(&dir.path().join("relay.db")).expect("store");
    let lookup = |t: &pwrelay_shared::secret::SecretString| {
        runtime.block_on(store.client_by_token(pwrelay_relay::api::auth::token_hash(t))).expect("lookup")
    };
    assert!(lookup(&first).is_none(), "the old token stopped working");
    let client = lookup(&second).expect("the new token works");
    assert_eq!(
        client.scopes.operations,
        Some([pwrelay_relay::store::Operation::Verify].into()),
        "scopes survive rotation"
    );
    let revoked = pwrelay(&["clients", "revoke", "pam", "--config", config]);
    assert!(revoked.status.success());
    assert!(lookup(&second).is_none(), "a revoked client's token does not work");
    let again = pwrelay(&["clients", "revoke", "pam", "--config", config]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("no API client"));
    let bad = pwrelay(&["clients", "add", "x", "--operation", "delete-everything", "--config", config]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("rotate, verify, unlock or reconcile"));
}
