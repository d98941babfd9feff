//! API keys: generated from the OS CSPRNG, shown once, stored and looked up only as SHA-256 digests.
//!
//! A key is `sg_` followed by 64 hex digits: 256 random bits. SHA-256 is the
//! right hash for it, not argon2 or bcrypt: those slow down guessing of
//! low-entropy passwords, and nobody can guess a 256-bit random value, so a
//! slow hash would only add milliseconds to every check. A fast digest lets
//! the check path look the key up in memory with no database round-trip.

use slidegate_core::ApiKeyDigest;

/// Every key starts with this, so a leaked one is recognisable (secret scanners match on it).
pub const KEY_PREFIX: &str = "sg_";
/// Characters of the key shown in listings: `sg_` and 8 hex digits (32 bits, not enough to use).
pub const DISPLAY_PREFIX_LEN: usize = 11;

/// A freshly generated key. The plaintext exists only here and in the one response that returns it.
pub struct NewKey {
    pub plaintext: String,
    pub display_prefix: String,
    pub digest: ApiKeyDigest,
}

/// Never prints the plaintext.
impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewKey({}…)", self.display_prefix)
    }
}

/// # Errors
/// When the operating system's random source fails.
pub fn generate() -> Result<NewKey, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let mut plaintext = String::with_capacity(KEY_PREFIX.len() + 64);
    plaintext.push_str(KEY_PREFIX);
    for byte in bytes {
        plaintext.push_str(&format!("{byte:02x}"));
    }
    Ok(NewKey {
        display_prefix: plaintext[..DISPLAY_PREFIX_LEN].to_owned(),
        digest: digest(&plaintext),
        plaintext,
    })
}

/// The digest a presented key is looked up by: the core's, which front ends use too.
pub fn digest(key: &str) -> ApiKeyDigest {
    ApiKeyDigest::of(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_prefixed_and_hash_to_their_digest() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.plaintext, b.plaintext);
        assert!(a.plaintext.starts_with(KEY_PREFIX));
        assert_eq!(a.plaintext.len(), 67);
        assert!(a.plaintext.starts_with(&a.display_prefix));
        assert_eq!(digest(&a.plaintext), a.digest);
        assert!(!format!("{a:?}").contains(&a.plaintext[DISPLAY_PREFIX_LEN..]));
    }
}
