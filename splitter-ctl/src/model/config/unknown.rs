//! An unknown key, said the way an operator fixes it: where it is (`service[0].protocl`), the
//! key they probably meant, and the keys the table takes. Tables are read in file order, so
//! the key reported is the first unknown one in the file.

use toml::de::{DeTable, DeValue};

/// When `message` is serde's refusal of an unknown key (``unknown field `x`, expected one of
/// `a`, `b` ``) and the key starts at byte `offset` of `text`: the key's path, and the problem
/// with a suggestion. `None` for any other message.
pub(super) fn describe(text: &str, offset: usize, message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let path = DeTable::parse(text)
        .ok()
        .and_then(|table| path_to(table.get_ref(), offset, ""))
        .unwrap_or_else(|| key.to_owned());
    let suggestion =
        closest(key, &expected).map_or_else(String::new, |k| format!("; did you mean `{k}`?"));
    let keys = if expected.is_empty() {
        "it takes no keys".to_owned()
    } else {
        format!("it takes {}", expected.join(", "))
    };
    Some((path, format!("unknown key{suggestion} ({keys})")))
}

/// The path (`service[0].health.intervall_ms`) of the key that starts at byte `offset`.
fn path_to(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if key.span().start == offset {
            return Some(path);
        }
        let found =
            match value.get_ref() {
                DeValue::Table(inner) => path_to(inner, offset, &path),
                DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| match item
                    .get_ref()
                {
                    DeValue::Table(inner) => path_to(inner, offset, &format!("{path}[{i}]")),
                    _ => None,
                }),
                _ => None,
            };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The expected key nearest to `key`, when it is near enough to be a slip: a typo, a missing or
/// doubled letter, two letters swapped, or a unit left off (`hold` for `hold_ms`).
fn closest<'a>(key: &str, expected: &[&'a str]) -> Option<&'a str> {
    let limit = (key.chars().count() / 3).clamp(1, 3);
    let unit_left_off = |candidate: &str| {
        candidate
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('_'))
    };
    expected
        .iter()
        .map(|candidate| {
            let d = if unit_left_off(candidate) {
                1
            } else {
                distance(key, candidate)
            };
            (d, *candidate)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, with a swap of neighbours counting one (optimal string alignment).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slips_are_near_and_other_keys_are_not() {
        assert_eq!(distance("protocl", "protocol"), 1);
        assert_eq!(distance("intreval_ms", "interval_ms"), 1);
        assert_eq!(distance("helth", "health"), 1);
        let keys = ["name", "listen", "protocol", "health"];
        assert_eq!(closest("protocl", &keys), Some("protocol"));
        assert_eq!(closest("colour", &keys), None);
        assert_eq!(closest("nmae", &keys), Some("name"));
        assert_eq!(closest("hold", &["steps", "hold_ms"]), Some("hold_ms"));
    }

    #[test]
    fn the_path_names_the_table_and_the_service_by_position() {
        let text = "interface = \"x\"\n[[service]]\nname = \"a\"\n[[service]]\nname = \"b\"\n[service.health]\nintervall_ms = 5\n";
        let offset = text.find("intervall_ms").expect("key");
        assert_eq!(
            DeTable::parse(text)
                .ok()
                .and_then(|t| path_to(t.get_ref(), offset, "")),
            Some("service[1].health.intervall_ms".to_owned())
        );
        let message = "unknown field `intervall_ms`, expected one of `interval_ms`, `timeout_ms`";
        assert_eq!(
            describe(text, offset, message),
            Some((
                "service[1].health.intervall_ms".to_owned(),
                "unknown key; did you mean `interval_ms`? (it takes interval_ms, timeout_ms)"
                    .to_owned()
            ))
        );
        assert_eq!(describe(text, offset, "invalid type: integer"), None);
    }
}
