//! Text from the network, as it may be logged: every value a request carries (a token's claims, a
//! header, a path segment) goes to a log only through [`Untrusted`], which escapes control
//! characters (a newline or a terminal escape cannot forge a log line) and bounds the length (a
//! 60 KB claim cannot flood the log).
//!
//! Error bodies never carry such values at all: they name the field, not its content. The
//! parsers' own messages quote what they could not parse (serde: "unknown field `<60 KB>`",
//! "invalid type: string \"<a password>\""), so [`describe_json_error`] and
//! [`describe_data_error`] rebuild them from what is known to be safe: a position, and a field
//! name only when it looks like one.

use std::fmt;

/// Characters of an untrusted value that reach a log; the rest is counted, not shown.
pub const MAX_LOGGED_CHARS: usize = 96;

/// A value from the network, displayed escaped and bounded: `warn!(tenant = %Untrusted(&tid), ...)`.
#[derive(Clone, Copy, Debug)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shown, c) in self.0.chars().enumerate() {
            if shown == MAX_LOGGED_CHARS {
                let rest = self.0.chars().count() - shown;
                return write!(f, "…[{rest} more characters]");
            }
            if c.is_control() || c == '\\' || is_invisible(c) {
                // `\n`, `\u{1b}`, `\\`: readable, and never a line break or an escape sequence.
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        Ok(())
    }
}

/// Format and bidirectional controls that are not `char::is_control` but can make a log line lie
/// about its content (U+200B-U+200F, U+202A-U+202E, U+2066-U+2069, U+FEFF).
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Longest field name an error may repeat back (longer ones are not shown).
const MAX_FIELD_NAME: usize = 64;

/// `name`, if it looks like a field name (1-64 of `A-Z a-z 0-9 _ - .`) and so may be shown.
pub fn field_name(name: &str) -> Option<&str> {
    let plausible = !name.is_empty()
        && name.len() <= MAX_FIELD_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    plausible.then_some(name)
}

/// What a deserializer's error said, without the input it quoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataError {
    /// The text for the error body.
    pub message: String,
    /// The field at fault, when the error names one that may be shown.
    pub field: Option<String>,
}

/// Rebuilds a serde data error message (`unknown field`, `missing field`, `invalid type`, ...)
/// without any value from the input: field names are kept only when [`field_name`] accepts them.
pub fn describe_data_error(message: &str) -> DataError {
    // The phrase may follow a prefix of the parser's own ("Failed to deserialize query string: ").
    let quoted = |phrase: &str| {
        let start = message.find(phrase)? + phrase.len();
        message.get(start..)?.split_once('`').map(|(name, _)| name)
    };
    for (prefix, what) in [("unknown field `", "unknown field"), ("duplicate field `", "duplicate field")] {
        if let Some(name) = quoted(prefix) {
            return match field_name(name) {
                Some(name) => DataError { message: format!("{what} `{name}`"), field: Some(name.to_owned()) },
                None => DataError { message: format!("{what} (its name is not shown: not a field name)"), field: None },
            };
        }
    }
    if let Some(name) = quoted("missing field `").and_then(field_name) {
        return DataError { message: format!("missing field `{name}`"), field: Some(name.to_owned()) };
    }
    DataError { message: "a value has the wrong type or is not one of the accepted values".into(), field: None }
}

/// serde_json's error without any echo of the input (type errors quote the offending value, which
/// may be a password; unknown fields quote the name, which may be 60 KB), with the position.
pub fn describe_json_error(e: &serde_json::Error) -> DataError {
    use serde_json::error::Category;
    let at = format!("at line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Data => {
            let text = e.to_string();
            let mut described = describe_data_error(&text);
            described.message = format!("{} {at}", described.message);
            described
        }
        // serde_json's syntax messages are fixed texts ("expected value", "trailing comma", ...).
        Category::Syntax | Category::Eof => {
            let text = e.to_string();
            let fixed = text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m);
            DataError { message: format!("{fixed} {at}"), field: None }
        }
        Category::Io => DataError { message: "the body could not be read".into(), field: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let forged = "tenant\n2026-01-01T00:00:00Z  INFO pwrelay::audit: fake\u{1b}[2K";
        let shown = Untrusted(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\u{1b}'), "{shown}");
        assert!(shown.starts_with("tenant\\n2026"), "{shown}");
        assert!(shown.contains("\\u{1b}[2K"), "{shown}");
        assert_eq!(Untrusted("a\\nb").to_string(), "a\\\\nb", "a backslash cannot fake an escape");
        assert_eq!(Untrusted("a\u{202e}b").to_string(), "a\\u{202e}b");
        assert_eq!(Untrusted("plain-tenant.id").to_string(), "plain-tenant.id");
    }

    #[test]
    fn length_is_bounded() {
        let long = "x".repeat(60_000);
        let shown = Untrusted(&long).to_string();
        assert!(shown.len() < 200, "{}", shown.len());
        assert!(shown.ends_with(&format!("…[{} more characters]", 60_000 - MAX_LOGGED_CHARS)), "{shown}");
        let exact = "y".repeat(MAX_LOGGED_CHARS);
        assert_eq!(Untrusted(&exact).to_string(), exact);
    }

    #[test]
    fn data_errors_name_safe_fields_and_echo_no_value() {
        let long = "f".repeat(60_000);
        let unknown = describe_data_error(&format!("unknown field `{long}`, expected one of `domain`"));
        assert!(unknown.message.len() < 100 && unknown.field.is_none(), "{unknown:?}");
        let colour = describe_data_error("unknown field `colour`, expected one of `domain`, `target`");
        assert_eq!(colour, DataError { message: "unknown field `colour`".into(), field: Some("colour".into()) });
        let secret = describe_data_error("invalid type: string \"Hunter2!\", expected u32");
        assert!(!secret.message.contains("Hunter2"), "{secret:?}");
        let variant = describe_data_error("unknown variant `\u{1b}[2K`, expected `random`");
        assert!(!variant.message.contains('\u{1b}'), "{variant:?}");
        assert_eq!(describe_data_error("missing field `password`").field.as_deref(), Some("password"));
    }

    #[test]
    fn json_errors_keep_the_position_and_drop_the_input() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Shape {
            length: u32,
        }
        let e = serde_json::from_str::<Shape>("{\"length\": \"Hunter2!\"}").expect_err("wrong type");
        let described = describe_json_error(&e);
        assert!(!described.message.contains("Hunter2") && described.message.contains("line 1"), "{described:?}");
        let e = serde_json::from_str::<Shape>("{\"length\": ").expect_err("eof");
        assert!(describe_json_error(&e).message.starts_with("EOF while parsing"), "{:?}", describe_json_error(&e));
    }
}
