//! The `pwrelay` API client commands, run as a real process against a real relay and agent.

mod support;

use std::process::Output;

use support::World;

async fn pwrelay(world: &World, relay: &support::Relay, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pwrelay"));
    command
        .args(args)
        .env("PWRELAY_URL", format!("https://127.0.0.1:{}", relay.api.port()))
        .env("PWRELAY_CA_FILE", world.path("pki/ca.pem"))
        .env("PWRELAY_TOKEN", world.token.expose_secret());
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::task::spawn_blocking(move || command.output().expect("pwrelay runs")).await.expect("joined")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_rotate_verify_generate_and_list_from_the_command_line() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let dc = world.dc;
    let agent = world.start_agent(&relay, "site-cli", &[&dc.domain], &[&dc.domain]).await;
    let user = world.user("cli").await;
    let domain = dc.domain.as_str();

    let out = pwrelay(
        &world,
        &relay,
        &["rotate", "--domain", domain, "--upn", &user.upn, "--password-env", "NEW_PW"],
        &[("NEW_PW", "Cli!Rotated-Pass7")],
    )
    .await;
    assert!(out.status.success(), "{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("succeeded"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("Cli!Rotated"), "the password is never printed");
    assert!(dc.bind(&user.dn, "Cli!Rotated-Pass7").await.ok());

    let out = pwrelay(
        &world,
        &relay,
        &["verify", "--domain", domain, "--upn", &user.upn, "--password-env", "PW"],
        &[("PW", "Wrong!Pass-00")],
    )
    .await;
    assert!(out.status.success());
    assert!(stdout(&out).contains("does not match"), "{}", stdout(&out));

    let out = pwrelay(
        &world,
        &relay,
        &["rotate", "--domain", domain, "--upn", &user.upn, "--generate", "--mode", "friendly", "--json"],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json prints the job");
    let id = job["job_id"].as_str().expect("id").to_owned();
    let out = pwrelay(&world, &relay, &["jobs", "secret", &id], &[]).await;
    assert!(out.status.success());
    let generated = stdout(&out);
    assert!(dc.bind(&user.dn, &generated).await.ok(), "the printed password is the account's");
    let again = pwrelay(&world, &relay, &["jobs", "secret", &id], &[]).await;
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("410"));

    let out = pwrelay(&world, &relay, &["jobs", "list", "--state", "succeeded"], &[]).await;
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));

    let failed = pwrelay(
        &world,
        &relay,
        &["rotate", "--domain", domain, "--upn", "nobody@pwrelay.test", "--password-env", "PW"],
        &[("PW", "Valid!Passw0rd-2")],
    )
    .await;
    assert_eq!(failed.status.code(), Some(1), "a failed job exits 1");
    assert!(stdout(&failed).contains("account_not_found"));

    let csv = world.path("accounts.csv");
    std::fs::write(&csv, format!("upn\n{}\n", user.upn)).expect("csv");
    let out =
        pwrelay(&world, &relay, &["reconcile", "--domain", domain, "--csv", csv.to_str().expect("utf-8")], &[]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1/1"), "progress is shown");

    let no_token = std::process::Command::new(env!("CARGO_BIN_EXE_pwrelay"))
        .args(["jobs", "list", "--url", "https://127.0.0.1:1"])
        .env_remove("PWRELAY_TOKEN")
        .output()
        .expect("runs");
    assert_eq!(no_token.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("PWRELAY_TOKEN"));
    agent.stop().await;
    relay.stop().await;
}
