//! Throughput of the password engine: banned-password evaluations per second with a full custom
//! list (1000 terms) plus the built-in global list, and seed-compatible derivations per second at
//! the defaults (PBKDF2-HMAC-SHA512, 1000 iterations, 60 bytes). Run with
//! `cargo bench -p pwrelay-shared --bench password_engine` (release profile); see BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pwrelay_shared::derive::{DeriveParams, derive};
use pwrelay_shared::password::{
    CustomList, EnforcementMode, Evaluator, EvaluatorConfig, GenerateMode, GenerateOptions, GlobalList, Operation,
    UserContext, generate,
};
use pwrelay_shared::policy::Policy;
use pwrelay_shared::secret::SecretString;

/// A realistic mix: weak and strong, short and long, with substitutions and banned terms.
const PASSWORDS: [&str; 12] = [
    "P@ssw0rd2024!",
    "Summer2024#",
    "Contoso!Winter25",
    "Tf9#qLm2-Vx7!rKp",
    "MyCh@nc3W!thK4thy",
    "correct-horse-battery-staple",
    "Qwerty123!",
    "Velvet-Canyon-Oxide-Tulip7#",
    "L3tM3In!now",
    "Zq8#vW2%kR6&mN4",
    "Dragon!Fly88",
    "Welcome1",
];

/// 1000 custom terms: organization-like words (the first EFF words of 4 to 16 letters, with a
/// suffix so they do not all collide with the global list).
fn custom_terms() -> Vec<String> {
    include_str!("../data/eff-large-wordlist.txt")
        .lines()
        .filter(|w| (4..=12).contains(&w.len()))
        .step_by(7)
        .take(1000)
        .map(|w| format!("{w}co"))
        .collect()
}

fn evaluation(c: &mut Criterion) {
    let terms = custom_terms();
    assert_eq!(terms.len(), 1000);
    let evaluator = Evaluator::new(EvaluatorConfig {
        custom_list: CustomList::new(&terms).expect("the benchmark's custom list is valid"),
        global_list: GlobalList::builtin(),
        mode: EnforcementMode::Enforce,
        tenant_name: Some("Contoso".into()),
    });
    let user = UserContext {
        sam_account_name: "mmustermann".into(),
        display_name: "Max Mustermann".into(),
        first_name: "Max".into(),
        last_name: "Mustermann".into(),
    };
    let passwords: Vec<SecretString> = PASSWORDS.iter().map(|p| SecretString::from(*p)).collect();
    let mut group = c.benchmark_group("evaluate");
    group.throughput(Throughput::Elements(passwords.len() as u64));
    group.bench_function(format!("{}_terms_12_passwords", evaluator.term_count()), |b| {
        b.iter(|| {
            for password in &passwords {
                black_box(evaluator.evaluate(black_box(password), &user, Operation::Set));
            }
        })
    });
    group.finish();
}

fn derivation(c: &mut Criterion) {
    let salt = SecretString::from("ThisIsOurSharedHashValue");
    let params = DeriveParams::default();
    let mut group = c.benchmark_group("derive");
    group.throughput(Throughput::Elements(1));
    group.bench_function("pbkdf2_sha512_1000_60", |b| {
        b.iter(|| derive(black_box("Max.Mustermann@contoso.com"), &salt, &params))
    });
    // For comparison only: the same PBKDF2 with ring (assembly SHA-512), which `derive` does not use.
    group.bench_function("ring_pbkdf2_sha512_1000_60", |b| {
        b.iter(|| {
            let mut out = [0u8; 60];
            ring::pbkdf2::derive(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                std::num::NonZeroU32::MIN.saturating_add(999),
                b"ThisIsOurSharedHashValue",
                black_box(b"max.mustermann@contoso.com"),
                &mut out,
            );
            out
        })
    });
    group.finish();
}

fn generation(c: &mut Criterion) {
    let evaluator = Evaluator::new(EvaluatorConfig::default());
    let policy = Policy::default();
    let user = UserContext::default();
    let mut group = c.benchmark_group("generate");
    group.throughput(Throughput::Elements(1));
    for mode in [GenerateMode::Random, GenerateMode::Friendly, GenerateMode::Passphrase] {
        let options = GenerateOptions { mode, length: 16, words: 4 };
        group.bench_function(format!("{mode:?}").to_lowercase(), |b| {
            b.iter(|| generate(&policy, &options, &evaluator, &user))
        });
    }
    group.finish();
}

criterion_group!(benches, evaluation, derivation, generation);
criterion_main!(benches);
