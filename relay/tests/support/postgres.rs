//! A PostgreSQL store for the tests, the fault suite and the benchmarks: a fresh database on the
//! test server of `deploy/dev/postgres.sh` (`PWRELAY_TEST_POSTGRES_URL` and its companions).

use std::path::PathBuf;

use pwrelay_shared::tls::{self, TrustAnchors};

/// The test server's settings, from `deploy/dev/postgres.sh env`.
#[derive(Debug)]
pub(crate) struct PgServer {
    url: String,
    password_file: PathBuf,
    ca_file: PathBuf,
}

impl PgServer {
    /// The server, or `None` when `PWRELAY_TEST_POSTGRES_URL` is not set.
    pub(crate) fn from_env() -> Option<Self> {
        let url = std::env::var("PWRELAY_TEST_POSTGRES_URL").ok()?;
        let var = |name: &str| PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is not set")));
        Some(Self {
            url,
            password_file: var("PWRELAY_TEST_POSTGRES_PASSWORD_FILE"),
            ca_file: var("PWRELAY_TEST_POSTGRES_CA_FILE"),
        })
    }

    /// The server, or `None` after saying on the terminal that `test` is skipped and how to run it.
    pub(crate) fn for_test(test: &str) -> Option<Self> {
        let server = Self::from_env();
        if server.is_none() {
            use std::io::Write as _;
            // Straight to the terminal: libtest captures print macros.
            let _ = writeln!(
                std::io::stderr(),
                "note: {test} skipped: PWRELAY_TEST_POSTGRES_URL is not set (deploy/dev/postgres.sh start; \
                 eval \"$(deploy/dev/postgres.sh env)\")"
            );
        }
        server
    }

    /// Creates an empty database and returns the URL that reaches it.
    pub(crate) async fn fresh_database(&self) -> String {
        let password = std::fs::read_to_string(&self.password_file).expect("password file");
        let mut config: tokio_postgres::Config = self.url.parse().expect("PWRELAY_TEST_POSTGRES_URL");
        config.password(password.trim_end());
        let anchors = TrustAnchors::from_file(&self.ca_file).expect("CA file");
        let tls = tls::database_client(Some(&anchors)).expect("database TLS");
        let (client, connection) =
            config.connect(tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone())).await.expect("connect");
        let driver = tokio::spawn(connection);
        let name = format!("pwrelay_test_{}", uuid::Uuid::new_v4().simple());
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
        drop(client);
        let _ = driver.await;
        let (base, query) = self.url.split_once('?').unwrap_or((self.url.as_str(), ""));
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        if query.is_empty() { format!("{base}/{name}") } else { format!("{base}/{name}?{query}") }
    }

    /// The `[store]` section (without `key_file`) of a relay on the database `url`.
    pub(crate) fn store_section(&self, url: &str) -> String {
        format!("[store]\n{}", self.store_lines(url))
    }

    /// The lines of a `[store]` section (without `key_file`) that reach the database `url`.
    pub(crate) fn store_lines(&self, url: &str) -> String {
        format!(
            "url = \"{url}\"\npassword_file = \"{}\"\nca_file = \"{}\"\npool_size = 4\n",
            self.password_file.display(),
            self.ca_file.display()
        )
    }
}
