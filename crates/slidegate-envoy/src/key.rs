//! The counter key of a matched descriptor: the request's values along the path, joined so that two different value lists never give the same key.
//!
//! The policy already names the rule (domain and the path of keys), so the
//! key holds only the values, in order: `alice|10.0.0.1`. A `|` or `\` inside
//! a value is escaped with `\`, so `a|b` as one value (`a\|b`) and `a`, `b`
//! as two (`a|b`) stay apart. The core then bounds it
//! ([`MAX_KEY_LEN`](slidegate_core::key::MAX_KEY_LEN) bytes, no control
//! characters): a request whose values break that is refused, not truncated,
//! because a truncated key would count unrelated clients together.

use slidegate_core::{KeyError, LimiterKey};

/// Joins `values` into the counter key and validates it as the core will.
///
/// # Errors
/// [`KeyError`] when the key is empty, too long, or holds a control character.
pub fn counter_key<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<String, KeyError> {
    let mut key = String::new();
    for (index, value) in values.into_iter().enumerate() {
        if index > 0 {
            key.push('|');
        }
        for c in value.chars() {
            if matches!(c, '|' | '\\') {
                key.push('\\');
            }
            key.push(c);
        }
    }
    // One empty value still counts as one client. A lone `\` is no join's
    // output (every `\` written escapes the character after it).
    if key.is_empty() {
        key.push('\\');
    }
    LimiterKey::parse(&key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slidegate_core::key::MAX_KEY_LEN;

    #[test]
    fn different_value_lists_never_share_a_key() {
        let pairs: [&[&str]; 8] = [
            &["a|b"],
            &["a", "b"],
            &["a\\", "b"],
            &["a\\|b"],
            &["", ""],
            &["|"],
            &[""],
            &["\\"],
        ];
        let keys: Vec<String> = pairs
            .iter()
            .map(|values| counter_key(values.iter().copied()).unwrap())
            .collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            counter_key(["alice", "10.0.0.1"]).unwrap(),
            "alice|10.0.0.1"
        );
    }

    #[test]
    fn keys_the_core_would_refuse_are_refused_here() {
        assert!(matches!(
            counter_key(["a\nb"]),
            Err(KeyError::ControlCharacter { .. })
        ));
        let long = "x".repeat(MAX_KEY_LEN + 1);
        assert!(matches!(
            counter_key([long.as_str()]),
            Err(KeyError::TooLong { .. })
        ));
        assert!(counter_key([""]).is_ok());
    }
}
