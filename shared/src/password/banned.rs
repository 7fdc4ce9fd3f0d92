//! The banned-term lists: the built-in global list and the organization's custom list.
//!
//! # Global list
//! Microsoft's global list is not public. pwrelay ships its own in `shared/data/global-banned-terms.txt`:
//! the 2,000 most frequent base terms of the password frequency list of zxcvbn (Dropbox, MIT licence,
//! as packaged in the `zxcvbn` 3.1.1 crate), taken in rank order, normalized, 4 to 16 characters,
//! and skipping any entry within one edit of a term already taken (so `password1` is covered by
//! `password`). `shared/data/README.md` has the provenance, the licence and the script that
//! rebuilds it. An operator can replace it with [`GlobalList::from_terms`].
//!
//! # Custom list
//! As in Entra ID: at most 1,000 terms of 4 to 16 characters, compared case-insensitively. An
//! invalid list is refused as a whole, naming the first offending term, so a typo in the
//! configuration never silently weakens the check.

use super::normalize::normalize;

/// Most terms a custom list may hold (the Entra ID limit).
pub const CUSTOM_LIST_MAX_TERMS: usize = 1000;
/// Fewest characters in a banned term.
pub const TERM_MIN_CHARS: usize = 4;
/// Most characters in a banned term.
pub const TERM_MAX_CHARS: usize = 16;

/// The built-in global list (see the module documentation).
const BUILTIN_GLOBAL: &str = include_str!("../../data/global-banned-terms.txt");

/// Why a banned-term list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BannedListError {
    /// The custom list has more than [`CUSTOM_LIST_MAX_TERMS`] terms.
    #[error("the custom banned-password list has {count} terms; at most 1000 are allowed")]
    TooManyTerms {
        /// Number of terms in the list.
        count: usize,
    },
    /// A term has fewer than [`TERM_MIN_CHARS`] characters.
    #[error("banned term {term:?} is too short: terms need 4 to 16 characters")]
    TermTooShort {
        /// The offending term, as given.
        term: String,
    },
    /// A term has more than [`TERM_MAX_CHARS`] characters.
    #[error("banned term {term:?} is too long: terms need 4 to 16 characters")]
    TermTooLong {
        /// The offending term, as given.
        term: String,
    },
    /// A term contains a control character (a stray tab or carriage return, usually).
    #[error("banned term {term:?} contains a control character")]
    ControlCharacter {
        /// The offending term, as given.
        term: String,
    },
}

/// A validated custom banned-password list (normalized, without duplicates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomList {
    terms: Vec<String>,
}

impl CustomList {
    /// Validates `terms` (surrounding whitespace is ignored, duplicates are merged).
    pub fn new<I, S>(terms: I) -> Result<Self, BannedListError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut normalized = Vec::new();
        let mut count = 0usize;
        for term in terms {
            let term = term.as_ref().trim();
            validate_term(term)?;
            count += 1;
            normalized.push(normalize(term));
        }
        if count > CUSTOM_LIST_MAX_TERMS {
            return Err(BannedListError::TooManyTerms { count });
        }
        normalized.sort_unstable();
        normalized.dedup();
        Ok(Self { terms: normalized })
    }

    /// Parses a list with one term per line; blank lines are ignored.
    pub fn parse(text: &str) -> Result<Self, BannedListError> {
        Self::new(text.lines().filter(|line| !line.trim().is_empty()))
    }

    /// The normalized terms.
    pub fn terms(&self) -> &[String] {
        &self.terms
    }

    /// Whether the list has no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// The global banned-password list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalList {
    terms: Vec<String>,
}

impl GlobalList {
    /// The list built into pwrelay (see the module documentation).
    pub fn builtin() -> Self {
        let mut terms: Vec<String> = BUILTIN_GLOBAL
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter(|term| validate_term(term).is_ok())
            .map(normalize)
            .collect();
        terms.sort_unstable();
        terms.dedup();
        Self { terms }
    }

    /// A replacement list (for example a newer one shipped by operations), one term per element,
    /// validated like custom terms but without a limit on their number.
    pub fn from_terms<I, S>(terms: I) -> Result<Self, BannedListError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut normalized = Vec::new();
        for term in terms {
            let term = term.as_ref().trim();
            validate_term(term)?;
            normalized.push(normalize(term));
        }
        normalized.sort_unstable();
        normalized.dedup();
        Ok(Self { terms: normalized })
    }

    /// No global terms at all: only the custom list and the names count. For tests and for
    /// reproducing worked examples; never for production, where Entra's global list cannot be
    /// turned off either.
    pub fn dangerous_empty() -> Self {
        Self { terms: Vec::new() }
    }

    /// The normalized terms.
    pub fn terms(&self) -> &[String] {
        &self.terms
    }
}

fn validate_term(term: &str) -> Result<(), BannedListError> {
    let chars = term.chars().count();
    if term.chars().any(char::is_control) {
        return Err(BannedListError::ControlCharacter { term: term.to_owned() });
    }
    if chars < TERM_MIN_CHARS {
        return Err(BannedListError::TermTooShort { term: term.to_owned() });
    }
    if chars > TERM_MAX_CHARS {
        return Err(BannedListError::TermTooLong { term: term.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_list_is_normalized_and_deduplicated() {
        let list = CustomList::parse("Contoso\n\n  C0NT0S0  \nFabrikam\n").unwrap();
        assert_eq!(list.terms(), ["contoso", "fabrikam"]);
        assert!(CustomList::new(Vec::<String>::new()).unwrap().is_empty());
    }

    #[test]
    fn too_many_terms_are_refused() {
        let terms: Vec<String> = (0..1001).map(|i| format!("term{i:04}")).collect();
        let err = CustomList::new(&terms).unwrap_err();
        assert_eq!(err, BannedListError::TooManyTerms { count: 1001 });
        assert_eq!(err.to_string(), "the custom banned-password list has 1001 terms; at most 1000 are allowed");
        assert!(CustomList::new(&terms[..1000]).is_ok());
    }

    #[test]
    fn bad_terms_are_named_in_the_error() {
        let err = CustomList::parse("contoso\nabc\n").unwrap_err();
        assert_eq!(err, BannedListError::TermTooShort { term: "abc".into() });
        assert_eq!(err.to_string(), "banned term \"abc\" is too short: terms need 4 to 16 characters");

        let err = CustomList::new(["seventeen-chars-x"]).unwrap_err();
        assert!(err.to_string().contains("\"seventeen-chars-x\" is too long"), "{err}");

        let err = CustomList::new(["tab\tbed"]).unwrap_err();
        assert_eq!(err, BannedListError::ControlCharacter { term: "tab\tbed".into() });

        // Exactly 4 and 16 characters (not bytes) are fine.
        assert!(CustomList::new(["äöüß", "abcdefghijklmnop"]).is_ok());
    }

    #[test]
    fn builtin_global_list_loads() {
        let list = GlobalList::builtin();
        assert!(list.terms().len() >= 1990, "{}", list.terms().len());
        assert!(list.terms().iter().any(|t| t == "password"));
        assert!(list.terms().iter().all(|t| (4..=16).contains(&t.chars().count())));
        assert!(GlobalList::dangerous_empty().terms().is_empty());
        assert_eq!(GlobalList::from_terms(["abc"]).unwrap_err(), BannedListError::TermTooShort { term: "abc".into() });
    }
}
