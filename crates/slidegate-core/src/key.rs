//! The limiter key: what a policy counts per (a user, a tenant, an address), bounded so it cannot bloat the store.
//!
//! A key is 1 to [`MAX_KEY_LEN`] bytes of UTF-8 without control characters
//! (U+0000 to U+001F and U+007F). Keys become Redis key names, log-safe
//! lengths and in-process map keys joined with NUL (see
//! [`with_composite_key`]); a NUL, a newline or an escape sequence in a key
//! is never a user id, only a way to confuse whatever reads it next.

use std::cell::RefCell;
use std::fmt;

/// Longest key, in bytes. Keys become part of Redis key names; a bound keeps
/// memory per key predictable and stops clients from storing payloads in them.
pub const MAX_KEY_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key must not be empty")]
    Empty,
    #[error("key is {len} bytes long; the maximum is {MAX_KEY_LEN}")]
    TooLong { len: usize },
    /// The byte is a C0 control character or DEL; `at` is its byte offset.
    #[error(
        "key contains the control character 0x{byte:02X} at byte {at}; keys must not contain U+0000 to U+001F or U+007F"
    )]
    ControlCharacter { byte: u8, at: usize },
}

/// A validated key, borrowed from the request: validation allocates nothing.
///
/// A key checked with an API key also carries the key's tenant. Stores put
/// the tenant next to the policy name as `<policy>@<tenant>`, never into the
/// key text: policy names cannot contain `@`, so a tenant's `bob` and an
/// unscoped `acme/bob` (or `@acme:bob`) always count separately.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimiterKey<'a> {
    key: &'a str,
    tenant: Option<&'a str>,
}

impl<'a> LimiterKey<'a> {
    /// # Errors
    /// When the key is empty, longer than [`MAX_KEY_LEN`] bytes, or holds a
    /// control character (C0 or DEL).
    pub fn parse(key: &'a str) -> Result<Self, KeyError> {
        match key.len() {
            0 => return Err(KeyError::Empty),
            len if len > MAX_KEY_LEN => return Err(KeyError::TooLong { len }),
            _ => {}
        }
        // Bytes, not chars: every byte of a multi-byte UTF-8 sequence is
        // 0x80 or above, so this finds exactly the control characters.
        if let Some(at) = key.bytes().position(|byte| byte < 0x20 || byte == 0x7F) {
            return Err(KeyError::ControlCharacter {
                byte: key.as_bytes()[at],
                at,
            });
        }
        Ok(Self { key, tenant: None })
    }

    /// The same key, counted for `tenant` only (a validated tenant name:
    /// `[A-Za-z0-9_.-]`, so it holds no `@`, `:`, braces or NUL).
    pub fn scoped(self, tenant: &'a str) -> Self {
        Self {
            key: self.key,
            tenant: Some(tenant),
        }
    }

    pub fn as_str(&self) -> &'a str {
        self.key
    }

    /// The tenant the key is counted for, if it was checked with an API key.
    pub fn tenant(&self) -> Option<&'a str> {
        self.tenant
    }
}

/// Keys may identify people (user ids, addresses): debug output shows only their length.
impl fmt::Debug for LimiterKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LimiterKey({} bytes", self.key.len())?;
        if let Some(tenant) = self.tenant {
            write!(f, ", tenant {tenant}")?;
        }
        f.write_str(")")
    }
}

thread_local! {
    /// Reused buffer for composite map keys, so looking up a known key allocates nothing.
    static COMPOSITE_KEY: RefCell<String> = RefCell::new(String::with_capacity(128));
}

/// Runs `f` on `parts` joined by NUL, built in a per-thread buffer that is
/// reused from call to call. Policy names, algorithm names, tenant names and
/// keys parsed here hold no NUL, so two different part lists never join to
/// the same string.
///
/// Re-entrant calls (from inside `f`) get a fresh buffer rather than a panic.
pub(crate) fn with_composite_key<R>(parts: &[&str], f: impl FnOnce(&str) -> R) -> R {
    fn join(buffer: &mut String, parts: &[&str]) {
        buffer.clear();
        for (index, part) in parts.iter().enumerate() {
            if index > 0 {
                buffer.push('\0');
            }
            buffer.push_str(part);
        }
    }
    COMPOSITE_KEY.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            join(&mut buffer, parts);
            f(&buffer)
        }
        Err(_) => {
            let mut buffer = String::new();
            join(&mut buffer, parts);
            f(&buffer)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_in_bytes_not_characters() {
        assert_eq!(LimiterKey::parse(""), Err(KeyError::Empty));
        assert!(LimiterKey::parse(&"k".repeat(MAX_KEY_LEN)).is_ok());
        // 86 three-byte characters: 258 bytes.
        assert_eq!(
            LimiterKey::parse(&"€".repeat(86)),
            Err(KeyError::TooLong { len: 258 })
        );
    }

    #[test]
    fn control_characters_are_refused_wherever_they_are_and_other_text_is_not() {
        for byte in (0u8..0x20).chain([0x7F]) {
            let control = char::from(byte);
            for (key, at) in [
                (format!("{control}"), 0),
                (format!("user{control}"), 4),
                (format!("a{control}b{control}"), 1),
            ] {
                assert_eq!(
                    LimiterKey::parse(&key),
                    Err(KeyError::ControlCharacter { byte, at }),
                    "{key:?}"
                );
            }
        }
        for key in [
            "user@example.com",
            "ü",
            "日本",
            "🦀",
            "a b",
            "~!\\\"{}",
            "\u{80}",
        ] {
            assert!(LimiterKey::parse(key).is_ok(), "{key:?}");
        }
        let message = LimiterKey::parse("a\0b").unwrap_err().to_string();
        assert!(message.contains("0x00 at byte 1"), "{message}");
    }

    #[test]
    fn composite_keys_join_parts_with_nul_even_when_nested() {
        let outer = with_composite_key(&["p", "k"], |outer| {
            let inner = with_composite_key(&["q", "gcra", "k"], str::to_owned);
            assert_eq!(inner, "q\0gcra\0k");
            outer.to_owned()
        });
        assert_eq!(outer, "p\0k");
    }
}
