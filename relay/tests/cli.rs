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
    use pwrelay_relay::store::ClientStore as _;
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
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("rotate, verify, unlock, reconcile, lifecycle, status or audit")
    );
    let operator = token(pwrelay(&["clients", "add", "ops", "--operation", "status", "--config", config]));
    assert_eq!(
        lookup(&operator).expect("the operator's token works").scopes.operations,
        Some([pwrelay_relay::store::Operation::Status].into()),
        "the status scope is granted like the others"
    );
    let help = pwrelay(&["clients", "add", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("/status"), "--help names the status scope");
}

#[test]
fn client_webhooks_get_a_secret_shown_once_and_sealed_and_urls_and_events_are_validated() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "domains = [\"corp.example.com\"]\n[api]\ncert_file = \"a\"\nkey_file = \"b\"\n[link]\ncert_file = \"c\"\n\
         key_file = \"d\"\nagent_ca_file = \"e\"\n[store]\npath = \"relay.db\"\nkey_file = \"store.key\"\n",
    )
    .expect("config");
    let key = dir.path().join("store.key");
    assert!(pwrelay(&["store-key", "generate", "--out", key.to_str().expect("utf-8")]).status.success());
    let config = config.to_str().expect("utf-8");
    assert!(pwrelay(&["clients", "add", "siem", "--config", config]).status.success());
    let set = |extra: &[&str]| {
        let mut args = vec!["clients", "webhook", "set", "siem"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--config", config]);
        pwrelay(&args)
    };
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let insecure = set(&["--url", "http://siem.example.com/hooks"]);
    assert_eq!(insecure.status.code(), Some(64));
    assert!(stderr(&insecure).contains("https://"), "{}", stderr(&insecure));
    let bad_event = set(&["--url", "https://siem.example.com/hooks", "--event", "job.queued"]);
    assert_eq!(bad_event.status.code(), Some(64));
    assert!(stderr(&bad_event).contains("job.succeeded or job.failed"));

    let first = set(&["--url", "https://siem.example.com/hooks"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let secret = String::from_utf8(first.stdout).expect("utf-8").trim().to_owned();
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{secret}");
    let db = std::fs::read(dir.path().join("relay.db")).expect("database");
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()), "the secret is stored sealed only");

    let changed = set(&["--url", "http://127.0.0.1:9000/hooks", "--event", "job.failed"]);
    assert!(changed.status.success(), "http to loopback is allowed: {}", stderr(&changed));
    assert!(changed.stdout.is_empty(), "a change keeps the secret and prints none");
    assert!(stderr(&changed).contains("unchanged"));
    let rotated = set(&["--url", "https://siem.example.com/hooks", "--rotate-secret"]);
    let new_secret = String::from_utf8(rotated.stdout).expect("utf-8").trim().to_owned();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret, "--rotate-secret prints a new secret");

    let log = pwrelay(&["clients", "webhook", "deliveries", "siem", "--json", "--config", config]);
    assert!(log.status.success(), "{}", stderr(&log));
    let log: serde_json::Value = serde_json::from_slice(&log.stdout).expect("JSON");
    assert_eq!(log["webhook"]["url"], "https://siem.example.com/hooks");
    assert_eq!(log["webhook"]["events"], serde_json::json!(["job.succeeded", "job.failed"]));
    assert_eq!(log["deliveries"], serde_json::json!([]));
    assert!(!log.to_string().contains("whsec_"), "the log never shows the secret");

    let removed = pwrelay(&["clients", "webhook", "remove", "siem", "--config", config]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let again = pwrelay(&["clients", "webhook", "remove", "siem", "--config", config]);
    assert!(!again.status.success() && stderr(&again).contains("has no webhook"));
    let unknown = pwrelay(&["clients", "webhook", "set", "nobody", "--url", "https://x.test/", "--config", config]);
    assert!(!unknown.status.success() && stderr(&unknown).contains("no API client"), "{}", stderr(&unknown));
}
