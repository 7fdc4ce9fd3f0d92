//! Normalization of passwords and banned terms before matching (step 1 of the Entra Password
//! Protection algorithm): lower-case, then undo the common character substitutions.
//!
//! The table is the one Microsoft documents (`0→o`, `1→l`, `$→s`, `@→a`) extended with the other
//! common ones (`3→e`, `4→a`, `5→s`, `7→t`, `!→i`). Banned terms, names and passwords all go through
//! the same function, so a term written `C0ntoso` in a custom list still bans `contoso`.

/// Normalizes `text` into `out` (cleared first), one `char` per element.
///
/// Lower-casing uses Unicode's full mapping, so the output may have more characters than the input
/// (`İ` becomes `i` + a combining dot); scores count the normalized characters.
pub(crate) fn normalize_into(text: &str, out: &mut Vec<char>) {
    out.clear();
    out.reserve(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(substitute(c.to_ascii_lowercase()));
        } else {
            out.extend(c.to_lowercase().map(substitute));
        }
    }
}

/// Normalizes a non-secret text (a banned term, a name) into a `String`.
pub(crate) fn normalize(text: &str) -> String {
    let mut chars = Vec::new();
    normalize_into(text, &mut chars);
    chars.into_iter().collect()
}

/// The substitution table, applied after lower-casing.
fn substitute(c: char) -> char {
    match c {
        '0' => 'o',
        '1' => 'l',
        '3' => 'e',
        '4' => 'a',
        '5' | '$' => 's',
        '7' => 't',
        '@' => 'a',
        '!' => 'i',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table_of_the_seed() {
        assert_eq!(normalize("Ch4nc3"), "chance");
        assert_eq!(normalize("$3cur!tY"), "security");
        assert_eq!(normalize("L@mbCh0p"), "lambchop");
        assert_eq!(normalize("@lP!n3"), "alpine");
    }

    #[test]
    fn every_documented_substitution_is_applied() {
        let table = [
            ('0', 'o'),
            ('1', 'l'),
            ('3', 'e'),
            ('4', 'a'),
            ('5', 's'),
            ('7', 't'),
            ('@', 'a'),
            ('$', 's'),
            ('!', 'i'),
        ];
        for (from, to) in table {
            assert_eq!(normalize(&from.to_string()), to.to_string(), "{from}");
        }
        // Characters outside the table stay as they are.
        assert_eq!(normalize("2689#%"), "2689#%");
    }

    #[test]
    fn lower_cases_non_ascii_letters() {
        assert_eq!(normalize("ÄÖÜ"), "äöü");
        assert_eq!(normalize("ΣΟΦΙΑ"), "σοφια");
        // Full Unicode mapping: one upper-case letter may become two characters.
        assert_eq!(normalize("İ").chars().count(), 2);
    }
}
