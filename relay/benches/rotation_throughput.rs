//! End-to-end rotation throughput: N rotations through the HTTPS API, relay, mTLS link, agent and
//! LDAPS into the throwaway Samba AD DC, next to N raw LDAP resets made directly with ldap3 on the
//! same DC in the same run. Prints throughput and latency percentiles.
//!
//!     cargo bench -p pwrelay-relay --bench rotation_throughput -- [N]      (default N = 200)
//!
//! Needs the throwaway DC (started if not running; see deploy/dev/samba-dc.sh).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, LdapConnSettings, Mod};
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::json;
use support::World;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(name: &str, total: Duration, mut latencies: Vec<Duration>) -> f64 {
    latencies.sort();
    let rate = latencies.len() as f64 / total.as_secs_f64();
    println!(
        "{name:<28} {:>5} in {:>6.2} s = {rate:>7.1}/s   latency p50 {:>6.1} ms  p95 {:>6.1} ms  p99 {:>6.1} ms",
        latencies.len(),
        total.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.95).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
    );
    rate
}

fn quoted_utf16(password: &str) -> Vec<u8> {
    format!("\"{password}\"").encode_utf16().flat_map(u16::to_le_bytes).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200);
    let world = World::new(&[]).await;
    let dc = world.dc;
    eprintln!("creating {} test users ...", 2 * n);
    let mut raw_users = Vec::new();
    let mut api_users = Vec::new();
    for _ in 0..n {
        raw_users.push(world.user("braw").await);
        api_users.push(world.user("bapi").await);
    }

    // Raw: one LDAPS connection bound as the same delegated service account the agent uses,
    // one modify per reset (unicodePwd + pwdLastSet, as the agent writes), sequentially.
    let anchors = TrustAnchors::from_file(&dc.ca_file).expect("DC CA");
    let settings = LdapConnSettings::new().set_config(tls::ldap_client(&anchors).expect("tls"));
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &dc.ldaps_url).await.expect("connect");
    ldap3::drive!(conn);
    ldap.simple_bind(&world.service.dn, world.service.password.expose_secret())
        .await
        .and_then(|r| r.success())
        .expect("bind");
    let started = Instant::now();
    let mut raw = Vec::with_capacity(n);
    for (i, user) in raw_users.iter().enumerate() {
        let t = Instant::now();
        let mods = vec![
            Mod::Replace(b"unicodePwd".to_vec(), HashSet::from([quoted_utf16(&format!("Bench!Raw-{i}x"))])),
            Mod::Replace(b"pwdLastSet".to_vec(), HashSet::from([b"-1".to_vec()])),
        ];
        ldap.modify(&user.dn, mods).await.and_then(|r| r.success()).expect("raw reset");
        raw.push(t.elapsed());
    }
    let raw_total = started.elapsed();
    let _ = ldap.unbind().await;

    // Through pwrelay: all rotations submitted at once, each timed from POST to its final state.
    let relay = world.start_relay().await;
    let agent = world.start_agent(&relay, "bench", &[&dc.domain], &[&dc.domain]).await;
    let ready = support::eventually(Duration::from_secs(20), || async { agent.readyz().await.0 == 200 }).await;
    assert!(ready, "agent ready");
    let started = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for (i, user) in api_users.iter().enumerate() {
        let submitted = Instant::now();
        let body = json!({ "domain": dc.domain.as_str(), "target": { "upn": user.upn }, "password": format!("Bench!Api-{i}x") });
        pending.push((submitted, world.rotate(&relay, body).await));
    }
    let mut api = Vec::with_capacity(n);
    for (submitted, id) in pending {
        let job = world.wait_final(&relay, &id, Duration::from_secs(600)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        api.push(submitted.elapsed());
    }
    let api_total = started.elapsed();

    println!("\nrotation throughput, N = {n}, Samba AD DC on 127.0.0.1 (ldb:nosync), one agent");
    let raw_rate = report("raw ldap3 resets", raw_total, raw);
    let api_rate = report("pwrelay API -> agent -> AD", api_total, api);
    println!("ratio pwrelay / raw: {:.2}x", api_rate / raw_rate);
    agent.stop().await;
    relay.stop().await;
}
