//! The OpenAPI document the relay serves at `/v1/openapi.json`: it names every route of the route
//! table in `src/api/mod.rs` with its methods and authentication, the routes answer as documented,
//! and it carries the schemas, parameters and error bodies clients build on.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::{Value, json};
use support::{Relay, World};

/// The route table of the API module's documentation: (method, path) → whether it takes a token.
fn route_table() -> BTreeMap<(String, String), bool> {
    let source = include_str!("../src/api/mod.rs");
    let mut routes = BTreeMap::new();
    for line in source.lines().filter_map(|l| l.strip_prefix("//! | `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let (route, auth) = (cells[0].trim_end_matches('`'), cells[1].trim());
        let (method, path) = route.split_once(' ').expect("a route cell is `METHOD /path`");
        // `/v1/jobs/{id}[?wait=S]`: the optional query is not part of the path.
        let path = path.split('[').next().expect("path");
        // `token` (possibly with the scope it needs) is the API token; anything else is not.
        assert!(!auth.is_empty(), "auth column of {route}");
        let fresh = routes.insert((method.to_owned(), path.to_owned()), auth.starts_with("token"));
        assert!(fresh.is_none(), "{route} is in the table twice");
    }
    assert!(routes.len() >= 12, "the route table was found: {routes:?}");
    routes
}

/// An HTTPS client of the relay that follows no redirect, so a route's own answer is checked (the
/// status pages answer 303).
fn not_following(world: &World) -> reqwest::Client {
    let anchors = pwrelay_shared::tls::TrustAnchors::from_file(&world.path("pki/ca.pem")).expect("ca");
    let tls = (*pwrelay_shared::tls::https_client(&anchors).expect("tls")).clone();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// `GET /v1/openapi.json`, without a token.
async fn document(world: &World, relay: &Relay) -> Value {
    let url = format!("https://127.0.0.1:{}/v1/openapi.json", relay.api.port());
    let response = world.http.get(url).send().await.expect("answer");
    assert_eq!(response.status(), 200, "the document needs no token");
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    response.json().await.expect("the document is JSON")
}

/// The operations of the document: (method, path) → operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), &Value> {
    let mut operations = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            operations.insert((method.to_uppercase(), path.clone()), operation);
        }
    }
    operations
}

/// The schema a `$ref` names.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.strip_prefix("#/components/schemas/").expect("a component reference");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Every `$ref` anywhere in `value`.
fn references(value: &Value, found: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                found.insert(reference.clone());
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

/// Every example value in `value`, and no example on a password.
fn examples_of<'a>(value: &'a Value, found: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            let is_password = map.get("format").and_then(Value::as_str) == Some("password");
            for key in ["example", "examples"] {
                if let Some(example) = map.get(key) {
                    assert!(!is_password, "a password has no example: {value}");
                    found.push(example);
                }
            }
            map.values().for_each(|v| examples_of(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| examples_of(v, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_with_its_methods_and_answers_as_documented() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let doc = document(&world, &relay).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "OpenAPI 3: {}", doc["openapi"]);
    let table = route_table();
    let operations = operations(&doc);

    let documented: BTreeSet<_> = operations.keys().cloned().collect();
    let listed: BTreeSet<_> = table.keys().cloned().collect();
    assert_eq!(
        documented.difference(&listed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented routes missing from the table in src/api/mod.rs"
    );
    assert_eq!(
        listed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes of the table missing from /v1/openapi.json"
    );

    let mut ids = BTreeSet::new();
    for ((method, path), needs_token) in &table {
        let operation = operations[&(method.clone(), path.clone())];
        let bearer = operation["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        assert_eq!(bearer, *needs_token, "{method} {path}: bearer security as in the table");
        let id = operation["operationId"].as_str().expect("operationId");
        assert!(ids.insert(id.to_owned()), "operationId {id} is unique");
        assert!(operation["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {path} has a summary");
    }

    // Each route is served, and what it answers is among its documented responses.
    let http = not_following(&world);
    let base = format!("https://127.0.0.1:{}", relay.api.port());
    let unknown_job = "0190c5d6-0000-7000-8000-000000000000";
    let mut seen_codes = BTreeSet::new();
    for (method, path) in table.keys() {
        let url = format!("{base}{}", path.replace("{id}", unknown_job));
        let mut request = http
            .request(Method::from_bytes(method.as_bytes()).expect("method"), &url)
            .bearer_auth(world.token.expose_secret());
        if method == "POST" {
            request = request.json(&json!({}));
        }
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(status != 405 && !message.starts_with("no such route"), "{method} {path} is served: {status} {body}");
        let responses = &operations[&(method.clone(), path.clone())]["responses"];
        assert!(responses.get(status.to_string()).is_some(), "{method} {path} answered {status}, undocumented: {body}");
        if let Some(code) = body["error"]["code"].as_str() {
            seen_codes.insert(code.to_owned());
        }
    }

    // A documented path serves no method it does not document; the refusal is a typed error.
    for path in doc["paths"].as_object().expect("paths").keys() {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if operations.contains_key(&(method.to_owned(), path.clone())) {
                continue;
            }
            let url = format!("{base}{}", path.replace("{id}", unknown_job));
            let response = http
                .request(Method::from_bytes(method.as_bytes()).expect("method"), &url)
                .bearer_auth(world.token.expose_secret())
                .send()
                .await
                .expect("answer");
            assert_eq!(response.status(), 405, "{method} {path} is not served");
            let body: Value = response.json().await.expect("a typed error");
            assert_eq!(body["error"]["code"], "method_not_allowed", "{method} {path}: {body}");
            seen_codes.insert("method_not_allowed".to_owned());
        }
    }
    let (status, body) = world.get(&relay, "/v1/no-such-route").await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    assert!(body["error"]["details"].is_object(), "details is always an object: {body}");

    // Every error code met above is one the document lists.
    let codes = &doc["components"]["schemas"]["ApiErrorCode"]["enum"];
    let listed_codes: BTreeSet<String> =
        codes.as_array().expect("ApiErrorCode enum").iter().filter_map(|c| c.as_str().map(str::to_owned)).collect();
    assert!(seen_codes.len() >= 3, "{seen_codes:?}");
    assert!(seen_codes.is_subset(&listed_codes), "{seen_codes:?} ⊆ {listed_codes:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_carries_schemas_parameters_security_and_error_bodies() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let doc = document(&world, &relay).await;
    let operations = operations(&doc);
    let schemas = &doc["components"]["schemas"];

    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["type"], "http");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    // Every reference resolves.
    let mut found = BTreeSet::new();
    references(&doc, &mut found);
    for reference in &found {
        let name = reference.strip_prefix("#/components/schemas/").expect("component reference");
        assert!(schemas.get(name).is_some(), "{reference} resolves");
    }

    // Every job-creating POST takes an Idempotency-Key header and a JSON body (callouts are
    // idempotent by their taskProcessingResult.id, link claims by being once-only); every error
    // response is an ErrorBody.
    for ((method, path), operation) in &operations {
        if method == "POST" && operation["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "jobs")) {
            let key = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == "Idempotency-Key")
                .unwrap_or_else(|| panic!("POST {path} documents Idempotency-Key"));
            assert_eq!(key["in"], "header");
            assert!(
                operation["requestBody"]["content"]["application/json"]["schema"].is_object(),
                "POST {path} has a JSON body schema"
            );
        }
        for (status, response) in operation["responses"].as_object().expect("responses") {
            let content = response["content"].as_object().filter(|c| !c.is_empty());
            let content = content.unwrap_or_else(|| panic!("{method} {path} {status} documents its body"));
            assert!(content.values().all(|media| media["schema"].is_object()), "{method} {path} {status} schema");
            let is_error = status.starts_with('4') || (status.starts_with('5') && path != "/readyz");
            if is_error && (path.starts_with("/v1/") || content.contains_key("application/json")) {
                let schema = &content["application/json"]["schema"];
                assert_eq!(schema["$ref"], "#/components/schemas/ErrorBody", "{method} {path} {status}");
            }
        }
    }

    // The error body: {"error": {"code", "message", "details"}}, with every code listed.
    let error = resolve(&doc, &schemas["ErrorBody"]["properties"]["error"]);
    let required: BTreeSet<&str> =
        error["required"].as_array().expect("required").iter().filter_map(Value::as_str).collect();
    assert_eq!(required, BTreeSet::from(["code", "message", "details"]));
    let codes = &resolve(&doc, &error["properties"]["code"])["enum"];
    for code in ["invalid_json", "unauthenticated", "forbidden", "not_found", "conflict", "gone", "invalid_request"] {
        assert!(codes.as_array().expect("codes").contains(&json!(code)), "{code} is documented");
    }
    let details = resolve(&doc, &error["properties"]["details"]);
    for field in ["field", "limit_bytes", "missing_scope", "job_id"] {
        assert!(details["properties"].get(field).is_some(), "details.{field}");
    }

    // A rotation takes a password or has one generated.
    let rotation = &operations[&("POST".to_owned(), "/v1/rotations".to_owned())];
    let body = resolve(&doc, &rotation["requestBody"]["content"]["application/json"]["schema"]);
    for field in ["domain", "target", "password", "generate", "recipient_public_key", "must_change", "unlock"] {
        assert!(body["properties"].get(field).is_some(), "RotationRequest.{field}");
    }
    assert_eq!(body["properties"]["password"]["format"], "password");
    assert_eq!(body["additionalProperties"], false, "unknown fields are refused, and documented so");
    let generate = schemas["GenerateRequest"]["properties"]["mode"].to_string();
    assert!(generate.contains("GenerateMode"), "generate.mode names its values: {generate}");
    assert_eq!(schemas["GenerateMode"]["enum"], json!(["random", "friendly", "passphrase"]));
    let target = resolve(&doc, &body["properties"]["target"]);
    for field in ["upn", "sam_account_name", "object_guid", "dn"] {
        assert!(target["properties"].get(field).is_some(), "TargetRequest.{field}");
    }
    assert_eq!(
        rotation["responses"]["202"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/JobAccepted"
    );

    // A reconciliation is JSON or CSV, with its CSV query.
    let reconciliation = &operations[&("POST".to_owned(), "/v1/reconciliations".to_owned())];
    let content = reconciliation["requestBody"]["content"].as_object().expect("content");
    assert_eq!(content.keys().map(String::as_str).collect::<Vec<_>>(), ["application/json", "text/csv"]);
    assert_eq!(resolve(&doc, &content["application/json"]["schema"])["properties"]["targets"]["type"], "array");
    let parameters = reconciliation["parameters"].to_string();
    assert!(parameters.contains("\"domain\"") && parameters.contains("\"query\""), "{parameters}");

    // Responses: a job, with its enums' values listed, and the job-failure codes.
    let show = &operations[&("GET".to_owned(), "/v1/jobs/{id}".to_owned())];
    let job = resolve(&doc, &show["responses"]["200"]["content"]["application/json"]["schema"]);
    for field in ["job_id", "kind", "domain", "target", "state", "created_at", "error", "result", "progress"] {
        assert!(job["properties"].get(field).is_some(), "Job.{field}");
    }
    assert!(job["properties"].get("client").is_none(), "the owning client is not shown");
    assert_eq!(schemas["JobState"]["enum"], json!(["queued", "dispatched", "succeeded", "failed"]));
    assert!(schemas["JobKind"]["description"].as_str().is_some_and(|d| d.contains("`reconcile_batch`:")));
    let failures = schemas["ErrorCode"]["enum"].as_array().expect("job error codes");
    assert!(failures.contains(&json!("policy_violation")) && failures.contains(&json!("partial_failure")));
    assert_eq!(schemas["JobId"]["format"], "uuid");
    assert_eq!(schemas["Timestamp"]["format"], "date-time");

    // No password or token in any example.
    let mut examples = Vec::new();
    examples_of(&doc, &mut examples);
    assert!(!examples.is_empty(), "the document has examples");
    for example in examples {
        let text = example.to_string();
        assert!(!text.contains("pwr_") && !text.contains("\"password\""), "example {text} holds no secret");
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_machine_readable_details() {
    let world = World::new(&[]).await;
    let relay = world.start_relay().await;
    let domain = world.dc.domain.as_str();

    let (status, reply) =
        world.post(&relay, "/v1/rotations", &json!({ "domain": domain, "target": {}, "password": "Xx1!xxxxxx" })).await;
    assert_eq!((status, &reply["error"]["details"]["field"]), (422, &json!("target")), "{reply}");

    let (status, reply) = world
        .post(
            &relay,
            "/v1/rotations",
            &json!({ "domain": "unknown.test", "target": { "upn": "a@b.c" }, "password": "x" }),
        )
        .await;
    assert_eq!((status, &reply["error"]["details"]["field"]), (422, &json!("domain")), "{reply}");

    let (status, reply) = world
        .post(
            &relay,
            "/v1/reconciliations",
            &json!({ "domain": domain, "targets": [{ "upn": "a@b.c" }, { "upn": "no-at-sign" }] }),
        )
        .await;
    assert_eq!((status, &reply["error"]["details"]["field"]), (422, &json!("targets[1].upn")), "{reply}");

    let url = format!("https://127.0.0.1:{}/v1/rotations", relay.api.port());
    let malformed = world
        .http
        .post(&url)
        .bearer_auth(world.token.expose_secret())
        .header("content-type", "application/json")
        .body("{\n  \"domain\": ")
        .send()
        .await
        .expect("answer");
    assert_eq!(malformed.status(), 400);
    let reply: Value = malformed.json().await.expect("json");
    assert_eq!(reply["error"]["details"]["line"], 2, "{reply}");

    // A reused idempotency key names the original job.
    let unlock = |upn: &str| {
        world
            .http
            .post(format!("https://127.0.0.1:{}/v1/unlocks", relay.api.port()))
            .bearer_auth(world.token.expose_secret())
            .header("Idempotency-Key", "unlock-details")
            .json(&json!({ "domain": domain, "target": { "upn": upn } }))
            .send()
    };
    let first = unlock("nobody@pwrelay.test").await.expect("answer");
    assert_eq!(first.status(), 202);
    let original: Value = first.json().await.expect("json");
    let reused = unlock("somebody@pwrelay.test").await.expect("answer");
    assert_eq!(reused.status(), 409);
    let reply: Value = reused.json().await.expect("json");
    assert_eq!(reply["error"]["details"]["job_id"], original["job_id"], "{reply}");
    assert_eq!(reply["error"]["details"]["field"], "Idempotency-Key", "{reply}");
    relay.stop().await;
}
