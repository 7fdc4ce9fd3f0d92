//! The `pwrelay` API client commands for operators and scripts: `rotate`, `verify`, `unlock`,
//! `reconcile`, `jobs list|show|wait|secret`. Human output by default, `--json` for scripts. The
//! token comes from `PWRELAY_TOKEN` or `--token-file`, passwords from a file or an environment
//! variable: never from the command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pwrelay_shared::secret::SecretString;
use pwrelay_shared::tls::{self, TrustAnchors};
use serde_json::{Value, json};

use super::{EXIT_CONFIG, current_thread_runtime};

/// Exit code when the job ended failed.
const EXIT_JOB_FAILED: u8 = 1;
/// Exit code when the relay could not be reached or refused the request.
const EXIT_API: u8 = 2;

/// Where the relay is and how to authenticate.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiArgs {
    /// The relay's API base URL.
    #[arg(long, env = "PWRELAY_URL")]
    url: String,
    /// CA certificate(s) the relay's API certificate chains to (PEM); the system bundle by default.
    #[arg(long, env = "PWRELAY_CA_FILE", default_value = "/etc/ssl/certs/ca-certificates.crt")]
    ca_file: PathBuf,
    /// File holding the API token (else the PWRELAY_TOKEN environment variable).
    #[arg(long, env = "PWRELAY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print the relay's JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

/// The account a command is about: exactly one.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct TargetArgs {
    /// userPrincipalName.
    #[arg(long)]
    upn: Option<String>,
    /// sAMAccountName.
    #[arg(long)]
    sam_account_name: Option<String>,
    /// objectGUID.
    #[arg(long)]
    object_guid: Option<String>,
    /// Distinguished name.
    #[arg(long)]
    dn: Option<String>,
}

impl TargetArgs {
    fn json(&self) -> Value {
        match (&self.upn, &self.sam_account_name, &self.object_guid, &self.dn) {
            (Some(v), ..) => json!({ "upn": v }),
            (_, Some(v), ..) => json!({ "sam_account_name": v }),
            (_, _, Some(v), _) => json!({ "object_guid": v }),
            (.., Some(v)) => json!({ "dn": v }),
            _ => json!({}),
        }
    }
}

/// Where a password comes from.
#[derive(Debug, clap::Args)]
#[group(multiple = false)]
pub(crate) struct PasswordArgs {
    /// Read the password from this file (one line).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Read the password from this environment variable.
    #[arg(long)]
    password_env: Option<String>,
}

impl PasswordArgs {
    fn read(&self) -> Result<Option<SecretString>, String> {
        match (&self.password_file, &self.password_env) {
            (Some(path), _) => {
                let text = SecretString::new(
                    std::fs::read_to_string(path).map_err(|e| format!("--password-file {}: {e}", path.display()))?,
                );
                Ok(Some(SecretString::from(text.expose_secret().trim_end_matches(['\r', '\n']))))
            }
            (_, Some(name)) => std::env::var(name)
                .map(|v| Some(SecretString::new(v)))
                .map_err(|_| format!("--password-env: environment variable {name} is not set")),
            _ => Ok(None),
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct RotateArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The AD domain.
    #[arg(long)]
    domain: String,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    password: PasswordArgs,
    /// Have the agent generate the password instead (read it once with `pwrelay jobs secret`).
    #[arg(long, conflicts_with_all = ["password_file", "password_env"])]
    generate: bool,
    /// Length of a generated password.
    #[arg(long, requires = "generate")]
    length: Option<u32>,
    /// Kind of generated password: random, friendly or passphrase.
    #[arg(long, requires = "generate")]
    mode: Option<String>,
    /// Require a change at next logon.
    #[arg(long)]
    must_change: bool,
    /// Also clear a lockout.
    #[arg(long)]
    unlock: bool,
    /// Ask the DC to apply password history to the reset.
    #[arg(long)]
    enforce_history: bool,
    /// Wait up to this many seconds for the job to end (0: do not wait).
    #[arg(long, default_value_t = 60)]
    wait: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The AD domain.
    #[arg(long)]
    domain: String,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    password: PasswordArgs,
    /// Wait up to this many seconds for the answer.
    #[arg(long, default_value_t = 60)]
    wait: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UnlockArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The AD domain.
    #[arg(long)]
    domain: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Wait up to this many seconds for the job to end.
    #[arg(long, default_value_t = 60)]
    wait: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReconcileArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The AD domain.
    #[arg(long)]
    domain: String,
    /// CSV file with a `upn` column.
    #[arg(long)]
    csv: PathBuf,
    /// Wait up to this many seconds for the whole batch, showing progress.
    #[arg(long, default_value_t = 600)]
    wait: u64,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum JobsCommand {
    /// List your jobs (oldest first).
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Only jobs in this state: queued, dispatched, succeeded, failed.
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only jobs created at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
    /// Show one job.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The job id.
        id: String,
    },
    /// Wait for a job to end and show it (exit 1 if it failed).
    Wait {
        #[command(flatten)]
        api: ApiArgs,
        /// The job id.
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Read a generated password, once; it is erased from the relay.
    Secret {
        #[command(flatten)]
        api: ApiArgs,
        /// The job id.
        id: String,
    },
}

/// A connected API client.
struct Api {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    json: bool,
}

/// Why a command failed, with its exit code.
struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: EXIT_CONFIG, message: message.into() }
}

impl Api {
    fn new(args: &ApiArgs) -> Result<Self, Failure> {
        let token =
            match &args.token_file {
                Some(path) => SecretString::from(
                    SecretString::new(
                        std::fs::read_to_string(path)
                            .map_err(|e| usage(format!("--token-file {}: {e}", path.display())))?,
                    )
                    .expose_secret()
                    .trim(),
                ),
                None => SecretString::new(std::env::var("PWRELAY_TOKEN").map_err(|_| {
                    usage("set PWRELAY_TOKEN or --token-file to the API token from `pwrelay clients add`")
                })?),
            };
        let anchors = TrustAnchors::from_file(&args.ca_file).map_err(|e| usage(format!("--ca-file: {e}")))?;
        let mut tls = (*tls::https_client(&anchors).map_err(|e| usage(e.to_string()))?).clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| usage(format!("http client: {e}")))?;
        if !args.url.starts_with("https://") {
            return Err(usage("--url must start with https://"));
        }
        Ok(Self { http, base: args.url.trim_end_matches('/').to_owned(), token, json: args.json })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let response = request.bearer_auth(self.token.expose_secret()).send().await.map_err(|e| Failure {
            code: EXIT_API,
            message: format!("cannot reach the relay at {}: {e}", self.base),
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]["message"].as_str().unwrap_or("no details").to_owned();
        let code = body["error"]["code"].as_str().unwrap_or("error").to_owned();
        Err(Failure { code: EXIT_API, message: format!("the relay answered {status} {code}: {message}") })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(self.http.get(format!("{}{path}", self.base))).await
    }

    /// Long-polls a job until it ends or `limit` passes, calling `progress` on every answer.
    async fn wait(&self, id: &str, limit: Duration, mut progress: impl FnMut(&Value)) -> Result<Value, Failure> {
        // `limit` comes from the command line: a huge value waits "forever", it does not overflow.
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(limit).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs().min(30);
            let job = self.get(&format!("/v1/jobs/{id}?wait={left}")).await?;
            progress(&job);
            let finished = matches!(job["state"].as_str(), Some("succeeded" | "failed"));
            if finished || tokio::time::Instant::now() >= deadline {
                return Ok(job);
            }
        }
    }

    /// Prints `job` (JSON or a summary) and turns its state into the exit code.
    fn finish(&self, job: &Value) -> Result<(), Failure> {
        if self.json {
            println!("{job}");
        } else {
            println!("{}", summary(job));
        }
        match job["state"].as_str() {
            Some("failed") => Err(Failure { code: EXIT_JOB_FAILED, message: String::new() }),
            _ => Ok(()),
        }
    }
}

fn summary(job: &Value) -> String {
    let id = job["job_id"].as_str().unwrap_or("?");
    let state = job["state"].as_str().unwrap_or("?");
    let kind = job["kind"].as_str().unwrap_or("job");
    let mut line = format!("{kind} {id}: {state}");
    if let Some(dn) = job["result"]["account_dn"].as_str() {
        line.push_str(&format!(" ({dn})"));
    }
    if let Some(matches) = job["result"]["password_matches"].as_bool() {
        line.push_str(if matches { "; the password matches" } else { "; the password does not match" });
    }
    if let Some(code) = job["error"]["code"].as_str() {
        line.push_str(&format!("; {code}: {}", job["error"]["message"].as_str().unwrap_or("")));
    }
    if job["secret"] == "available" {
        line.push_str(&format!("; read the password once with `pwrelay jobs secret {id}`"));
    }
    if let Some(p) = job.get("progress").filter(|p| p.is_object()) {
        line.push_str(&format!(
            "; {} of {} done, {} failed",
            p["succeeded"].as_u64().unwrap_or(0) + p["failed"].as_u64().unwrap_or(0),
            p["total"],
            p["failed"]
        ));
    }
    line
}

fn run_with<F>(api_args: &ApiArgs, work: F) -> ExitCode
where
    F: AsyncFnOnce(Api) -> Result<(), Failure>,
{
    let result = Api::new(api_args)
        .and_then(|api| current_thread_runtime().map_err(|e| usage(e.to_string()))?.block_on(work(api)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("error: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn submit_and_wait(api: &Api, path: &str, body: Value, wait: u64) -> Result<(), Failure> {
    let reply = api.post(path, &body).await?;
    let id = reply["job_id"]
        .as_str()
        .ok_or_else(|| Failure { code: EXIT_API, message: "no job id in the answer".into() })?;
    if wait == 0 {
        if api.json {
            println!("{reply}")
        } else {
            println!("queued job {id}")
        }
        return Ok(());
    }
    let job = api.wait(id, Duration::from_secs(wait), |_| {}).await?;
    api.finish(&job)
}

pub(crate) fn rotate(args: RotateArgs) -> ExitCode {
    let password = match args.password.read() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut body = json!({
        "domain": args.domain, "target": args.target.json(),
        "must_change": args.must_change, "unlock": args.unlock, "enforce_history": args.enforce_history,
    });
    match (&password, args.generate) {
        (Some(p), false) => body["password"] = json!(p.expose_secret()),
        (None, true) => body["generate"] = json!({ "length": args.length, "mode": args.mode }),
        _ => {
            eprintln!("error: give --password-file, --password-env or --generate");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if let Some(generate) = body.get_mut("generate").and_then(Value::as_object_mut) {
        generate.retain(|_, v| !v.is_null());
    }
    let wait = args.wait;
    run_with(&args.api, async move |api: Api| submit_and_wait(&api, "/v1/rotations", body, wait).await)
}

pub(crate) fn verify(args: VerifyArgs) -> ExitCode {
    let password = match args.password.read() {
        Ok(Some(p)) => p,
        Ok(None) => {
            eprintln!("error: give --password-file or --password-env");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let body = json!({ "domain": args.domain, "target": args.target.json(), "password": password.expose_secret() });
    let wait = args.wait.max(1);
    run_with(&args.api, async move |api: Api| submit_and_wait(&api, "/v1/verifications", body, wait).await)
}

pub(crate) fn unlock(args: UnlockArgs) -> ExitCode {
    let body = json!({ "domain": args.domain, "target": args.target.json() });
    let wait = args.wait;
    run_with(&args.api, async move |api: Api| submit_and_wait(&api, "/v1/unlocks", body, wait).await)
}

pub(crate) fn reconcile(args: ReconcileArgs) -> ExitCode {
    let csv = match std::fs::read(&args.csv) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: --csv {}: {e}", args.csv.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (domain, wait) = (args.domain.clone(), args.wait);
    run_with(&args.api, async move |api: Api| {
        let request = api
            .http
            .post(format!("{}/v1/reconciliations", api.base))
            .query(&[("domain", domain.as_str())])
            .header("content-type", "text/csv")
            .body(csv);
        let reply = api.call(request).await?;
        let id = reply["job_id"].as_str().unwrap_or_default().to_owned();
        eprintln!("reconciliation {id} queued");
        let job = api
            .wait(&id, Duration::from_secs(wait), |job| {
                let p = &job["progress"];
                let done = p["succeeded"].as_u64().unwrap_or(0) + p["failed"].as_u64().unwrap_or(0);
                let total = p["total"].as_u64().unwrap_or(0);
                let width = 30usize;
                let filled = (done * 30).checked_div(total).map_or(0, |f| usize::try_from(f).unwrap_or(width));
                eprint!(
                    "\r[{}{}] {done}/{total} ({} failed)",
                    "#".repeat(filled),
                    " ".repeat(width - filled.min(width)),
                    p["failed"]
                );
                let _ = std::io::stderr().flush();
            })
            .await?;
        eprintln!();
        api.finish(&job)
    })
}

pub(crate) fn jobs(command: JobsCommand) -> ExitCode {
    match command {
        JobsCommand::List { api, state, domain, since } => run_with(&api, async move |api: Api| {
            let mut cursor: Option<String> = None;
            loop {
                let mut query: Vec<(&str, String)> = vec![("limit", "500".into())];
                query.extend(state.clone().map(|s| ("state", s)));
                query.extend(domain.clone().map(|d| ("domain", d)));
                query.extend(since.clone().map(|s| ("since", s)));
                query.extend(cursor.clone().map(|c| ("cursor", c)));
                let page = api.call(api.http.get(format!("{}/v1/jobs", api.base)).query(&query)).await?;
                for job in page["jobs"].as_array().into_iter().flatten() {
                    if api.json { println!("{job}") } else { println!("{}", summary(job)) }
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => return Ok(()),
                }
            }
        }),
        JobsCommand::Show { api, id } => run_with(&api, async move |api: Api| {
            let job = api.get(&format!("/v1/jobs/{id}")).await?;
            api.finish(&job)
        }),
        JobsCommand::Wait { api, id, timeout } => run_with(&api, async move |api: Api| {
            let job = api.wait(&id, Duration::from_secs(timeout), |_| {}).await?;
            api.finish(&job)
        }),
        JobsCommand::Secret { api, id } => run_with(&api, async move |api: Api| {
            let secret = api.get(&format!("/v1/jobs/{id}/secret")).await?;
            match (api.json, secret["encoding"].as_str()) {
                (true, _) => println!("{secret}"),
                (false, Some("plaintext")) => println!("{}", secret["password"].as_str().unwrap_or_default()),
                (false, _) => println!("{}", secret["sealed_box"].as_str().unwrap_or_default()),
            }
            Ok(())
        }),
    }
}
