//! Log output of both binaries: `tracing` to stderr, plain or JSON, filtered by level.
//!
//! Secrets never reach a log: they live in [`crate::secret`] types, whose `Debug` is redacted and
//! which have no `Display`.

use serde::Deserialize;

/// `[log]` in both configuration files.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `plain` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` (default) or `pwrelay_agent=debug,info`.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::default(), level: default_level() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log.level` does not parse.
    #[error("log.level {0:?} is not a valid filter (e.g. \"info\" or \"pwrelay_agent=debug,info\")")]
    Level(String),
}

/// Installs the global subscriber. Call once from `main`.
pub fn init(config: &LogConfig) -> Result<(), TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.level)
        .map_err(|_| TelemetryError::Level(config.level.clone()))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (e.g. in tests) keeps the first subscriber.
    let _already_set = match config.format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
