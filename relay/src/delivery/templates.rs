//! Message templates: `{name}` placeholders filled from a fixed set of values. An unknown
//! placeholder is left as written, so a typo shows in the message instead of failing delivery.

use pwrelay_shared::secret::SecretString;

/// Fills `{key}` placeholders of `template` from `values`.
pub fn render(template: &str, values: &[(&str, &str)]) -> SecretString {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}').map(|end| (&after[..end], end)) {
            Some((key, end)) if values.iter().any(|(k, _)| *k == key) => {
                let value = values.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).unwrap_or_default();
                out.push_str(value);
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    SecretString::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_unknown_ones_kept() {
        let text = render("Hi {name}, {link} {unknown} {", &[("name", "Jane"), ("link", "https://x/r/1#k")]);
        assert_eq!(text.expose_secret(), "Hi Jane, https://x/r/1#k {unknown} {");
    }
}
