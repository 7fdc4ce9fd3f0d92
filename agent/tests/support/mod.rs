//! Shared pieces of the agent's integration tests: a domain configuration for the throwaway DC,
//! job messages, and result accessors.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use pwrelay_agent::config::{BindMethod, DcUrl, DomainConfig, LdapTransport};
use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::testkit::TestDc;

/// A configuration for the test DC over LDAPS, bound as the administrator, with every rule at its
/// default; tests change the fields they are about.
pub fn domain_config(dc: &TestDc) -> DomainConfig {
    pwrelay_shared::tls::install_default_provider();
    DomainConfig {
        name: dc.domain.clone(),
        urls: vec![DcUrl { url: dc.ldaps_url.clone(), transport: LdapTransport::Ldaps }],
        discovery: None,
        ca_file: dc.ca_file.clone(),
        base_dn: dc.base_dn.clone(),
        bind: BindMethod::Simple,
        bind_dn: dc.admin_dn.clone(),
        bind_password: dc.admin_password.clone(),
        bind_password_file: None,
        refused_bind_retry: Duration::from_secs(900),
        refused_bind_retry_max: Duration::from_secs(4 * 3600),
        timeout: Duration::from_secs(5),
        connections: 4,
        verify_bind: false,
        scope: Default::default(),
        protected: Default::default(),
        password_check: Default::default(),
        reconcile: None,
    }
}

/// A DC URL with the transport its scheme implies.
pub fn dc_url(url: &str) -> DcUrl {
    let transport = if url.starts_with("ldaps://") { LdapTransport::Ldaps } else { LdapTransport::StartTls };
    DcUrl { url: url.to_owned(), transport }
}

/// A job of `kind` for the account `by`, with a lease a minute long.
pub fn job(id: &str, kind: pb::JobKind, dc: &TestDc, by: pb::target::By, password: Option<&str>) -> pb::Job {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    pb::Job {
        id: format!("{id}-{}", std::process::id()),
        kind: kind as i32,
        domain: dc.domain.to_string(),
        target: Some(pb::Target { by: Some(by) }),
        secret: password
            .map(|p| pb::SecretMaterial { material: Some(pb::secret_material::Material::Password(p.into())) }),
        options: Some(pb::JobOptions::default()),
        lease_deadline_unix_ms: i64::try_from(now).expect("fits") + 60_000,
        lease_duration_ms: 60_000,
        earlier_attempt_unresolved: false,
        attempt: 1,
        generate: None,
    }
}

/// The success of a result, or a panic naming what came instead.
pub fn success(result: &pb::JobResult) -> &pb::JobSuccess {
    match &result.outcome {
        Some(pb::job_result::Outcome::Success(s)) => s,
        other => panic!("success expected, got {other:?}"),
    }
}

/// The failure of a result, or a panic naming what came instead.
pub fn failure(result: &pb::JobResult) -> &pb::JobFailure {
    match &result.outcome {
        Some(pb::job_result::Outcome::Failure(f)) => f,
        other => panic!("failure expected, got {other:?}"),
    }
}
