//! New hires through the faults: a signed Lifecycle Workflows callout per new account, Graph and
//! the SMS gateway as the local fakes of `relay/tests/support/cloud.rs` (in this process, so they
//! are never faulted), the agent's initial password, the link from the fake SMS, its claim, and
//! the AES-256-GCM ciphertext opened with the key from the link's fragment — what the person's
//! browser does.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use pwrelay_shared::testkit::{TestDc, TestUser};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use crate::api::{Api, Reply};
use crate::cloud::{self, FakeCloud};
use crate::deployment::{Binaries, Deployment};
use crate::params::Params;
use crate::workload::{AccountRun, JobRecord, Kind, SecretOutcome, Shared};

const HMAC_SECRET: &str = "fault-suite-callout-secret-of-at-least-32-chars";
const WORKFLOW: &str = "14879e66-9ea9-48d0-804d-8fea672d0341";
const TASK: &str = "4806a56b-3e8f-4c4a-8ad5-1e2b3c7d8e9f";

/// One new hire: the account, its Graph id and the mobile number its link goes to.
#[derive(Debug)]
struct Hire {
    user: TestUser,
    subject: String,
    mobile: String,
}

/// The new-hire flow's fakes, its API client and the accounts.
pub(crate) struct NewHires {
    cloud: FakeCloud,
    /// A client with the `lifecycle` scope (the PAM client does not see new hires).
    helpdesk: Api,
    hires: Vec<Hire>,
    api_port: u16,
}

impl std::fmt::Debug for NewHires {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewHires").field("hires", &self.hires.len()).finish_non_exhaustive()
    }
}

impl NewHires {
    /// Starts the fakes, adds the `[lifecycle]` section to the relay's configuration (before the
    /// relay starts), the helpdesk client, and `params.new_hires` never-used accounts in `ou`.
    pub(crate) async fn prepare(
        deployment: &Deployment,
        bins: &Binaries,
        params: &Params,
        dc: &TestDc,
        ou: &str,
    ) -> Self {
        let cloud = FakeCloud::start(&deployment.dir).await;
        let path = |name: &str| deployment.dir.join(name);
        std::fs::write(path("callout.secret"), HMAC_SECRET).expect("callout.secret is written");
        std::fs::write(path("graph.secret"), format!("{}\n", cloud::CLIENT_SECRET)).expect("graph.secret is written");
        std::fs::write(path("sms.token"), "fake-sms-token\n").expect("sms.token is written");
        let section = format!(
            "\n[lifecycle]\npublic_url = \"https://localhost:{port}\"\norganization = \"Contoso\"\n\
             [[lifecycle.tenants]]\ntenant_id = \"{tenant}\"\ncallout_auth = \"hmac\"\nhmac_secret_file = \"callout.secret\"\n\
             client_id = \"{client}\"\nclient_secret_file = \"graph.secret\"\nmail_sender = \"pwrelay@contoso.test\"\n\
             [lifecycle.delivery]\nfirst_retry_seconds = 1\n\
             [lifecycle.sms]\nurl = \"{url}/sms\"\nbearer_token_file = \"sms.token\"\nfrom = \"Contoso\"\n\
             [lifecycle.reveal]\nrequests_per_link_per_hour = 1000\nrequests_per_client_per_minute = 1000\n\
             [lifecycle.endpoints]\nlogin = \"{url}\"\ngraph = \"{url}\"\nca_file = \"{ca}\"\n",
            port = deployment.api_port,
            tenant = cloud::TENANT,
            client = cloud::CLIENT_ID,
            url = cloud.url,
            ca = cloud.ca_file.display(),
        );
        for toml in deployment.relay_tomls() {
            let mut text = std::fs::read_to_string(toml).expect("relay.toml is readable");
            text.push_str(&section);
            std::fs::write(toml, text).expect("relay.toml is written");
        }
        let output = std::process::Command::new(&bins.relay)
            .args(["clients", "add", "fault-helpdesk", "--operation", "lifecycle", "--config"])
            .arg(&deployment.relays[0].toml)
            .output()
            .expect("pwrelay clients add runs");
        assert!(
            output.status.success(),
            "pwrelay clients add fault-helpdesk: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8(output.stdout).expect("the token is UTF-8").trim().to_owned();
        let helpdesk = Api::with_token(deployment, &token);
        let mut hires = Vec::new();
        for n in 0..params.new_hires {
            let user = dc.create_user_in(ou, "hire").await;
            let subject = uuid::Uuid::new_v4().to_string();
            let guid = uuid::Uuid::parse_str(&dc.object_guid(&user.dn).await).expect("objectGUID is a GUID");
            let mobile = format!("+491510000{n:04}");
            cloud.state.users.lock().expect("the fake's users").insert(
                subject.clone(),
                json!({
                    "displayName": format!("New Hire {n}"), "givenName": "New",
                    "onPremisesSamAccountName": user.sam, "onPremisesDomainName": dc.domain.to_string(),
                    "onPremisesImmutableId": base64::engine::general_purpose::STANDARD.encode(guid.to_bytes_le()),
                    "onPremisesUserPrincipalName": user.upn, "mobilePhone": mobile,
                }),
            );
            cloud
                .state
                .managers
                .lock()
                .expect("the fake's managers")
                .insert(subject.clone(), json!({"displayName": "Max Manager", "mail": "max@contoso.test"}));
            hires.push(Hire { user, subject, mobile });
        }
        Self { cloud, helpdesk, hires, api_port: deployment.api_port }
    }

    /// Onboards every hire, spread over the fault phase; one [`AccountRun`] each.
    pub(crate) async fn run(self: Arc<Self>, shared: Arc<Shared>) -> Vec<AccountRun> {
        let this = self;
        let schedule = shared.schedule;
        let count = this.hires.len();
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..count {
            let this = Arc::clone(&this);
            let shared = Arc::clone(&shared);
            tasks.spawn(async move {
                // Evenly over the first 80 % of the phase.
                let start =
                    Instant::now() + (schedule.phase_end - Instant::now()).mul_f64(0.8 * index as f64 / count as f64);
                tokio::time::sleep_until(start).await;
                (index, this.onboard(&shared, index).await)
            });
        }
        let mut runs: Vec<(usize, AccountRun)> = Vec::new();
        while let Some(done) = tasks.join_next().await {
            runs.push(done.expect("a new hire's task does not panic"));
        }
        runs.sort_by_key(|r| r.0);
        runs.into_iter().map(|r| r.1).collect()
    }

    async fn onboard(&self, shared: &Shared, index: usize) -> AccountRun {
        let hire = &self.hires[index];
        let deadline = shared.schedule.hard_deadline;
        let result_id = uuid::Uuid::new_v4().to_string();
        let mut record = JobRecord {
            kind: Kind::Initial,
            id: None,
            state: None,
            error_code: None,
            password: None,
            secret: SecretOutcome::NotExpected,
            note: None,
        };
        let run = |record: JobRecord| AccountRun { user: hire.user.clone(), planned: 1, jobs: vec![record] };
        let body = callout(&hire.subject, &result_id).to_string();
        // The callout, until the relay accepts it (the same body again is a replay).
        loop {
            let signature = pwrelay_relay::signature::sign(HMAC_SECRET.as_bytes(), SystemTime::now(), body.as_bytes());
            let reply = shared
                .api
                .post_raw(
                    "/v1/lifecycle/callouts",
                    body.as_bytes(),
                    &[("pwrelay-signature", &signature)],
                    Duration::from_secs(15),
                )
                .await;
            match reply {
                Reply::Answered(202, _) => break,
                Reply::Answered(503, _) | Reply::Unanswered(_) => {}
                Reply::Answered(status, reply) => {
                    record.note = Some(format!("the callout answered {status}: {reply}"));
                    return run(record);
                }
            }
            if Instant::now() >= deadline {
                record.note = Some("the relay did not accept the callout before the deadline".into());
                return run(record);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        shared.progress.submitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The request until it is done (delivered and resumed, or failed).
        let request = loop {
            if let Reply::Answered(200, request) =
                self.helpdesk.get_once(&format!("/v1/lifecycle/requests/{result_id}"), Duration::from_secs(10)).await
            {
                if record.id.is_none() {
                    record.id = request["job_id"].as_str().map(str::to_owned);
                }
                if request["stage"] == "done" {
                    break request;
                }
            }
            if Instant::now() >= deadline {
                record.note = Some(format!("request {result_id} not done at the deadline"));
                return run(record);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        record.id = request["job_id"].as_str().map(str::to_owned).or(record.id);
        let job = match &record.id {
            Some(id) => self.helpdesk.wait_final(id, deadline).await,
            None => Value::Null,
        };
        record.state = job["state"].as_str().filter(|s| *s == "succeeded" || *s == "failed").map(str::to_owned);
        record.error_code = job["error"]["code"].as_str().map(str::to_owned);
        if !record.succeeded() {
            if record.state.is_some() {
                shared.progress.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            record.note = Some(format!("request {result_id}: outcome {}, job {}", request["outcome"], job["state"]));
            return run(record);
        }
        shared.progress.succeeded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if request["outcome"] == "failed" {
            record.secret = SecretOutcome::Declared(request["outcome_reason"].as_str().unwrap_or_default().to_owned());
            return run(record);
        }
        // The link from the SMS (the last one to this number, should there be more), claimed once.
        let sms: Vec<String> = self.cloud.recorded(|r| {
            r.sms
                .iter()
                .filter(|m| m["to"] == hire.mobile)
                .filter_map(|m| m["message"].as_str().map(str::to_owned))
                .collect()
        });
        let Some(link) = sms.last().and_then(|m| link_in(m)) else {
            record.secret =
                SecretOutcome::Missing(format!("request {result_id} is done but no SMS reached {}", hire.mobile));
            return run(record);
        };
        let (page, key) = link.split_once('#').unwrap_or((link.as_str(), ""));
        // The page as the browser opens it: the relay's API port on this machine.
        let page = page.replacen(&format!("https://localhost:{}", self.api_port), "", 1);
        let (outcome, password) = self.claim(shared, &page, key, deadline).await;
        record.secret = outcome;
        record.password = password;
        run(record)
    }

    /// How often Graph `resume` was called for each task processing result, and with which status.
    pub(crate) fn resumes(&self) -> Vec<(String, String)> {
        self.cloud.recorded(|r| {
            r.resumes
                .iter()
                .map(|(id, body)| (id.clone(), body["data"]["operationStatus"].as_str().unwrap_or_default().to_owned()))
                .collect()
        })
    }

    /// Makes the SMS gateway answer 500 to every send (`true`) or none (`false`): deliveries retry
    /// meanwhile, holding their link keys.
    #[allow(dead_code, reason = "tests/replicas.rs uses it; this suite's faults are the processes' and the DC's")]
    pub(crate) fn sms_outage(&self, failing: bool) {
        let failures = if failing { u32::MAX } else { 0 };
        self.cloud.state.sms_failures.store(failures, std::sync::atomic::Ordering::SeqCst);
    }

    /// The new hires.
    pub(crate) fn count(&self) -> usize {
        self.hires.len()
    }

    /// Claims the link once and opens the ciphertext; then checks that a second claim is refused.
    async fn claim(
        &self,
        shared: &Shared,
        page: &str,
        key: &str,
        deadline: Instant,
    ) -> (SecretOutcome, Option<String>) {
        let Some(key_bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key).ok() else {
            return (SecretOutcome::Missing("the link's fragment is no key".into()), None);
        };
        let proof = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::new().chain_update(b"pwrelay-claim").chain_update(&key_bytes).finalize());
        let body = json!({ "proof": proof }).to_string();
        let path = format!("{page}/claim");
        let mut maybe_taken = false;
        let answer = loop {
            match shared.api.post_raw(&path, body.as_bytes(), &[], Duration::from_secs(60)).await {
                Reply::Answered(200, answer) => break answer,
                Reply::Answered(410, _) if maybe_taken => return (SecretOutcome::LostInTransit, None),
                Reply::Answered(503, _) => {}
                Reply::Answered(status, answer) => {
                    return (
                        SecretOutcome::Missing(format!("the claim answered {status}: {}", answer["error"]["code"])),
                        None,
                    );
                }
                Reply::Unanswered(why) => {
                    if !why.contains("onnect") {
                        maybe_taken = true;
                    }
                }
            }
            if Instant::now() >= deadline {
                return (SecretOutcome::Missing("the relay never answered the claim".into()), None);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let password = answer["ciphertext"]
            .as_str()
            .and_then(|c| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).ok())
            .and_then(|sealed| open(&sealed, &key_bytes));
        let Some(password) = password else {
            return (SecretOutcome::Missing("the ciphertext does not open with the link's key".into()), None);
        };
        for _ in 0..20 {
            match shared.api.post_raw(&path, body.as_bytes(), &[], Duration::from_secs(60)).await {
                Reply::Answered(200, _) => return (SecretOutcome::ReadTwice, Some(password)),
                Reply::Answered(503, _) | Reply::Unanswered(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                Reply::Answered(_, _) => return (SecretOutcome::ReadOnce, Some(password)),
            }
        }
        (SecretOutcome::ReadOnce, Some(password))
    }
}

/// AES-256-GCM as the page's WebCrypto call: the 12-byte nonce, then ciphertext and tag.
fn open(sealed: &[u8], key: &[u8]) -> Option<String> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let opening = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let mut body = body.to_vec();
    let plain = opening.open_in_place(Nonce::try_assume_unique_for_key(nonce).ok()?, Aad::empty(), &mut body).ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

fn link_in(message: &str) -> Option<String> {
    let start = message.find("https://")?;
    message[start..].split_whitespace().next().map(str::to_owned)
}

/// A Lifecycle Workflows callout for `subject`, as the Logic App forwards it.
fn callout(subject: &str, result_id: &str) -> Value {
    json!({
        "data": {
            "@odata.type": "microsoft.graph.identityGovernance.onboardingCalloutData",
            "callbackUriPath": format!("/identityGovernance/lifecycleWorkflows/workflows('{WORKFLOW}')/tasks('{TASK}')/processingResults('{result_id}')/microsoft.graph.identityGovernance.resume"),
            "subject": {"id": subject, "displayName": "New Hire", "userPrincipalName": "hire@contoso.test",
                        "manager": {"id": "0f7c2b8e-1d2e-4f5a-8b9c-0d1e2f3a4b5c", "displayName": "Max Manager", "email": "max@contoso.test"}},
            "task": {"id": TASK, "displayName": "Initial password"},
            "taskProcessingResult": {"id": result_id, "createdDateTime": "2026-11-22T08:00:00Z"},
            "workflow": {"id": WORKFLOW, "displayName": "Onboard new hires", "workflowVersion": 1}
        },
        "source": "sample",
        "type": "lifecycleEvent"
    })
}
