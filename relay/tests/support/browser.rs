//! A real headless Chromium, driven over WebDriver (chromedriver) with plain HTTP requests.
//! `deploy/dev/install-deps.sh` installs Debian's `chromium` and `chromium-driver`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: tokio::process::Child,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session that accepts the relay's test CA.
    pub async fn start() -> Self {
        let driver_path = std::env::var("PWRELAY_TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        assert!(
            std::path::Path::new(&driver_path).exists(),
            "{driver_path} is missing: run deploy/dev/install-deps.sh (installs chromium and chromium-driver)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let driver = tokio::process::Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                if r.json::<Value>().await.ok().and_then(|v| v.pointer("/value/ready").and_then(Value::as_bool))
                    == Some(true)
                {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not become ready");
        let profile = tempfile::tempdir().expect("profile").keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": std::env::var("PWRELAY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let created: Value =
            http.post(format!("{base}/session")).json(&caps).send().await.expect("session").json().await.expect("json");
        let session = created
            .pointer("/value/sessionId")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("chromium session: {created}"))
            .to_owned();
        Self { http, base, session, driver }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let value: Value = request.send().await.expect("webdriver answers").json().await.expect("json");
        value.get("value").cloned().unwrap_or(Value::Null)
    }

    pub async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// The element matching `css`, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> String {
        for _ in 0..100 {
            let found = self
                .command(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))
                .await;
            if let Some(id) = found.get(ELEMENT).and_then(Value::as_str) {
                return id.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no element {css} on the page");
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    /// Types `text` into the element matching `css` (a form field).
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{id}/value"), Some(json!({"text": text}))).await;
    }

    /// The URL the browser is on.
    pub async fn url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.command(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits up to 15 s for `css` to have non-empty text.
    pub async fn wait_text(&self, css: &str) -> String {
        for _ in 0..150 {
            let text = self.text(css).await;
            if !text.trim().is_empty() {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css} stayed empty: {}", self.page_text().await);
    }

    /// Saves a PNG of the page to `$PWRELAY_TEST_SCREENSHOTS/<name>.png` when that variable is set.
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("PWRELAY_TEST_SCREENSHOTS") else { return };
        self.screenshot_to(&std::path::Path::new(&dir).join(format!("{name}.png"))).await;
    }

    /// Saves a PNG of the page to `path`.
    pub async fn screenshot_to(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let png = self.command(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap_or_default()).expect("png");
        std::fs::write(path, bytes).expect("write screenshot");
    }

    pub async fn page_text(&self) -> String {
        self.text("body").await
    }

    pub async fn quit(mut self) {
        self.command(reqwest::Method::DELETE, "", None).await;
        let _ = self.driver.kill().await;
    }
}
