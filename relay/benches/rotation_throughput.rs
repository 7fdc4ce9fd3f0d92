//! End-to-end rotation throughput: N rotations through the HTTPS API, relay, mTLS link, agent and
//! LDAPS into the throwaway Samba AD DC, next to N raw LDAP resets made directly with ldap3 on the
//! same DC in the same run. Prints throughput, latency percentiles and CPU time per reset.
//!
//!     cargo bench -p pwrelay-relay --bench rotation_throughput -- [N] [--rounds R] [--probe]
//!
//! N defaults to 200, R to 4. Three sides, each on its own N test users:
//! - *raw*: one connection, one modify (unicodePwd + pwdLastSet) after the other;
//! - *raw + reads*: the agent's directory work without pwrelay, as many jobs at once as the agent
//!   runs: per user the account search and, after the modify, the read-back, each job on its own
//!   connection, the modifies on one shared connection (as the agent does);
//! - *pwrelay*: rotations POSTed back to back, each timed from its POST until the API reports it
//!   final.
//!
//! The work is split into R rounds, and each round runs N/R of each side, one after the other, so
//! that the load of a shared machine falls on all three alike. A side's throughput is its N over
//! the sum of its rounds' times. CPU time per reset is read from /proc for this process (relay,
//! agent and client) and for the DC's LDAP server processes (Samba's `ldap[...]`).
//!
//! `--probe` instead times each LDAP operation of the agent's path on one connection, and modifies
//! from several connections at once.
//!
//! Needs the throwaway DC (started if not running; see deploy/dev/samba-dc.sh).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope};
use pwrelay_agent::directory::{ACCOUNT_ATTRIBUTES, READ_BACK_ATTRIBUTES};
use pwrelay_shared::testkit::{TestDc, TestUser};
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::json;
use support::World;

/// Jobs the agent runs at once: relay.max_jobs_in_flight and domains[].connections, both at their
/// defaults (4). The raw side's "same concurrency" figure uses as many connections.
const AGENT_CONCURRENCY: usize = 4;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One side's figures, summed over the rounds.
#[derive(Default)]
struct Side {
    total: Duration,
    latencies: Vec<Duration>,
    /// CPU seconds of this process and of the DC's LDAP processes.
    cpu: (f64, f64),
}

impl Side {
    fn add(&mut self, total: Duration, latencies: Vec<Duration>, before: (f64, f64), after: (f64, f64)) {
        self.total += total;
        self.latencies.extend(latencies);
        self.cpu.0 += after.0 - before.0;
        self.cpu.1 += after.1 - before.1;
    }

    fn report(&mut self, name: &str) -> f64 {
        self.latencies.sort();
        let n = self.latencies.len() as f64;
        let rate = n / self.total.as_secs_f64();
        println!(
            "{name:<28} {:>5} in {:>6.2} s = {rate:>5.1}/s   p50 {:>6.1} ms  p95 {:>6.1} ms  p99 {:>6.1} ms   \
             CPU per reset: DC {:>4.1} ms, relay + agent + client {:>4.1} ms",
            self.latencies.len(),
            self.total.as_secs_f64(),
            ms(percentile(&self.latencies, 0.50)),
            ms(percentile(&self.latencies, 0.95)),
            ms(percentile(&self.latencies, 0.99)),
            self.cpu.1 * 1000.0 / n,
            self.cpu.0 * 1000.0 / n,
        );
        rate
    }
}

fn quoted_utf16(password: &str) -> Vec<u8> {
    format!("\"{password}\"").encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// What the agent writes: unicodePwd and pwdLastSet in one modify.
fn reset(password: &str) -> Vec<Mod<Vec<u8>>> {
    vec![
        Mod::Replace(b"unicodePwd".to_vec(), HashSet::from([quoted_utf16(password)])),
        Mod::Replace(b"pwdLastSet".to_vec(), HashSet::from([b"-1".to_vec()])),
    ]
}

/// An LDAPS connection bound as the delegated service account the agent uses.
async fn connect(world: &World) -> Ldap {
    let dc = world.dc;
    let anchors = TrustAnchors::from_file(&dc.ca_file).expect("DC CA");
    let settings = LdapConnSettings::new().set_config(tls::ldap_client(&anchors).expect("tls"));
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &dc.ldaps_url).await.expect("connect");
    ldap3::drive!(conn);
    ldap.simple_bind(&world.service.dn, world.service.password.expose_secret())
        .await
        .and_then(|r| r.success())
        .expect("bind");
    ldap
}

/// Resets `users` over `connections`, each taking the next user as soon as it is free.
async fn raw_batch(connections: &[Ldap], users: &[TestUser], tag: &str) -> (Duration, Vec<Duration>) {
    let next = Arc::new(AtomicUsize::new(0));
    let dns: Arc<Vec<String>> = Arc::new(users.iter().map(|u| u.dn.clone()).collect());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for ldap in connections {
        let (mut ldap, next, dns, tag) = (ldap.clone(), Arc::clone(&next), Arc::clone(&dns), tag.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(dn) = dns.get(i) else { return latencies };
                let t = Instant::now();
                ldap.modify(dn, reset(&format!("Bench!{tag}-{i}x"))).await.and_then(|r| r.success()).expect("reset");
                latencies.push(t.elapsed());
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.expect("raw task"));
    }
    (started.elapsed(), latencies)
}

/// The agent's LDAP work for `users` without pwrelay: `readers.len()` jobs at once, each on its own
/// connection searching the account (the agent's filter and attributes) and reading it back after
/// the modify, which goes through the shared `writer`.
async fn raw_with_reads(
    world: &World,
    readers: &[Ldap],
    writer: &Ldap,
    users: &[TestUser],
    tag: &str,
) -> (Duration, Vec<Duration>) {
    let next = Arc::new(AtomicUsize::new(0));
    let users: Arc<Vec<(String, String)>> = Arc::new(users.iter().map(|u| (u.upn.clone(), u.dn.clone())).collect());
    let base = world.dc.base_dn.clone();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for reader in readers {
        let (mut reader, mut writer) = (reader.clone(), writer.clone());
        let (next, users, base, tag) = (Arc::clone(&next), Arc::clone(&users), base.clone(), tag.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((upn, dn)) = users.get(i) else { return latencies };
                let t = Instant::now();
                let filter = format!("(&(objectClass=user)(!(objectClass=computer))(userPrincipalName={upn}))");
                let (found, _) = reader
                    .search(&base, Scope::Subtree, &filter, ACCOUNT_ATTRIBUTES.to_vec())
                    .await
                    .expect("search")
                    .success()
                    .expect("found");
                assert_eq!(found.len(), 1);
                // The protected-account check's live read of the account's groups.
                reader
                    .search(dn, Scope::Base, "(objectClass=*)", vec!["tokenGroups"])
                    .await
                    .expect("token groups")
                    .success()
                    .expect("token groups read");
                writer.modify(dn, reset(&format!("Bench!{tag}-{i}x"))).await.and_then(|r| r.success()).expect("reset");
                reader
                    .search(dn, Scope::Base, "(objectClass=user)", READ_BACK_ATTRIBUTES.to_vec())
                    .await
                    .expect("read")
                    .success()
                    .expect("read back");
                latencies.push(t.elapsed());
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.expect("raw task"));
    }
    (started.elapsed(), latencies)
}

/// Rotates `users` through the API: all submitted back to back, each timed from its POST until the
/// API reports it final; the batch from the first POST until the last job is final.
async fn api_batch(world: &World, relay: &support::Relay, users: &[TestUser], tag: &str) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(users.len());
    for (i, user) in users.iter().enumerate() {
        let submitted = Instant::now();
        let body = json!({
            "domain": world.dc.domain.as_str(),
            "target": { "upn": user.upn },
            "password": format!("Bench!{tag}-{i}x"),
        });
        pending.push((submitted, world.rotate(relay, body).await));
    }
    let mut latencies = Vec::with_capacity(users.len());
    for (submitted, id) in pending {
        let job = world.wait_final(relay, &id, Duration::from_secs(600)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        latencies.push(submitted.elapsed());
    }
    (started.elapsed(), latencies)
}

/// CPU seconds (user + system) of this process and of the DC's LDAP server processes.
fn cpu() -> (f64, f64) {
    let ticks = |path: &str| -> f64 {
        let Ok(stat) = std::fs::read_to_string(path) else { return 0.0 };
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { return 0.0 };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        (fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0)) / 100.0
    };
    let own = ticks("/proc/self/stat");
    let mut dc = 0.0;
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("ldap") {
            dc += ticks(&entry.path().join("stat").to_string_lossy());
        }
    }
    (own, dc)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(200);
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(4)
        .clamp(1, n.max(1));
    // The services' default log level; the test suites capture debug, which costs CPU here.
    support::logs_at("info");
    let world = World::new(&[]).await;
    if args.iter().any(|a| a == "--probe") {
        probe(&world, n).await;
        return;
    }
    eprintln!("creating {} test users ...", 3 * n);
    let mut users: [Vec<TestUser>; 3] = Default::default();
    for _ in 0..n {
        for (side, prefix) in users.iter_mut().zip(["braw", "brawr", "bapi"]) {
            side.push(world.user(prefix).await);
        }
    }
    let [raw_users, read_users, api_users] = users;

    let relay = world.start_relay().await;
    let agent = world.start_agent(&relay, "bench", &[&world.dc.domain], &[&world.dc.domain]).await;
    let ready = support::eventually(Duration::from_secs(20), || async { agent.readyz().await.0 == 200 }).await;
    assert!(ready, "agent ready");
    let one = connect(&world).await;
    let mut readers = Vec::new();
    for _ in 0..AGENT_CONCURRENCY {
        readers.push(connect(&world).await);
    }

    let mut sides: [Side; 3] = Default::default();
    let chunk = n.div_ceil(rounds);
    for round in 0..rounds {
        let range = round * chunk..((round + 1) * chunk).min(n);
        if range.is_empty() {
            break;
        }
        let before = cpu();
        let (t, l) = raw_batch(std::slice::from_ref(&one), &raw_users[range.clone()], &format!("R{round}")).await;
        let after = cpu();
        sides[0].add(t, l, before, after);
        let (t, l) = raw_with_reads(&world, &readers, &one, &read_users[range.clone()], &format!("V{round}")).await;
        let (before, after) = (after, cpu());
        sides[1].add(t, l, before, after);
        let (t, l) = api_batch(&world, &relay, &api_users[range], &format!("A{round}")).await;
        let (before, after) = (after, cpu());
        sides[2].add(t, l, before, after);
    }

    println!(
        "\nrotation throughput, N = {n} in {rounds} rounds, Samba AD DC on 127.0.0.1 (ldb:nosync), one agent \
         ({AGENT_CONCURRENCY} jobs at once)"
    );
    let [raw, reads, api] = &mut sides;
    let raw_rate = raw.report("raw ldap3 resets");
    let reads_rate = reads.report(&format!("raw + reads, {AGENT_CONCURRENCY} at once"));
    let api_rate = api.report("pwrelay API -> agent -> AD");
    println!(
        "ratio pwrelay / raw: {:.2}x   (raw + reads / raw: {:.2}x; pwrelay / raw + reads: {:.2}x)",
        api_rate / raw_rate,
        reads_rate / raw_rate,
        api_rate / reads_rate
    );
    agent.stop().await;
    relay.stop().await;
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len().max(1) as f64;
    println!(
        "  {name:<40} mean {mean:>7.2} ms  p50 {:>7.2}  p95 {:>7.2}",
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.95))
    );
}

/// Times each LDAP operation of the agent's path for a set-password job on one connection, then
/// whether the DC applies writes faster from several connections at once.
async fn probe(world: &World, n: usize) {
    let dc: &TestDc = world.dc;
    let mut users = Vec::new();
    for _ in 0..n {
        users.push(world.user("bprb").await);
    }
    let base = dc.base_dn.clone();
    // The agent's protected groups (rules.rs), by name for this probe.
    let groups = [
        "CN=Administrators,CN=Builtin",
        "CN=Account Operators,CN=Builtin",
        "CN=Server Operators,CN=Builtin",
        "CN=Print Operators,CN=Builtin",
        "CN=Backup Operators,CN=Builtin",
        "CN=Replicator,CN=Builtin",
        "CN=Domain Admins,CN=Users",
        "CN=Domain Controllers,CN=Users",
        "CN=Schema Admins,CN=Users",
        "CN=Enterprise Admins,CN=Users",
        "CN=Read-only Domain Controllers,CN=Users",
        "CN=Key Admins,CN=Users",
        "CN=Enterprise Key Admins,CN=Users",
    ];
    let in_chain: String = groups.iter().map(|g| format!("(memberOf:1.2.840.113556.1.4.1941:={g},{base})")).collect();
    let in_chain = format!("(|{in_chain})");
    let resolve_filter = |upn: &str| format!("(&(objectClass=user)(!(objectClass=computer))(userPrincipalName={upn}))");
    let nested_groups = format!("(&(objectClass=group){in_chain})");
    let mut ldap = connect(world).await;
    let mut times: [Vec<Duration>; 6] = Default::default();
    for (i, u) in users.iter().enumerate() {
        let t = Instant::now();
        ldap.search(&base, Scope::Subtree, &resolve_filter(&u.upn), ACCOUNT_ATTRIBUTES.to_vec())
            .await
            .expect("resolve");
        times[0].push(t.elapsed());
        let t = Instant::now();
        ldap.search(&u.dn, Scope::Base, &in_chain, vec!["1.1"]).await.expect("in-chain check");
        times[1].push(t.elapsed());
        let t = Instant::now();
        ldap.modify(&u.dn, reset(&format!("Bench!Prb-{i}x"))).await.and_then(|r| r.success()).expect("reset");
        times[2].push(t.elapsed());
        let t = Instant::now();
        ldap.search(&u.dn, Scope::Base, "(objectClass=user)", ACCOUNT_ATTRIBUTES.to_vec()).await.expect("read");
        times[3].push(t.elapsed());
        let t = Instant::now();
        ldap.search(&u.dn, Scope::Base, "(objectClass=user)", READ_BACK_ATTRIBUTES.to_vec()).await.expect("read");
        times[4].push(t.elapsed());
        if i % 20 == 0 {
            let t = Instant::now();
            ldap.search(&base, Scope::Subtree, &nested_groups, vec!["objectSid"]).await.expect("nested groups");
            times[5].push(t.elapsed());
        }
    }
    let [resolve, check, modify, read_all, read_few, nested] = times;
    println!("\nprobe: the agent's LDAP operations, one connection, one after another, N = {n}");
    summary("account search (subtree, by UPN)", resolve);
    summary("protected-group in-chain check (base)", check);
    summary("modify unicodePwd + pwdLastSet", modify);
    summary("read-back, all account attributes", read_all);
    summary("read-back, the 4 it needs", read_few);
    summary("groups nested in the protected groups", nested);

    println!("probe: modifies over several connections at once");
    for k in [1usize, 2, 4] {
        let mut connections = Vec::new();
        for _ in 0..k {
            connections.push(connect(world).await);
        }
        let (total, _) = raw_batch(&connections, &users, &format!("Par{k}")).await;
        println!("  {k} connection(s): {n} in {:.2} s = {:.1}/s", total.as_secs_f64(), n as f64 / total.as_secs_f64());
    }
}
