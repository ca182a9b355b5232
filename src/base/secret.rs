//! A shared secret read from a file: the callbacks' signing key and the
//! cluster's relay secret. Its Debug form never shows it, and a secret a
//! client presents is compared in constant time.

use subtle::ConstantTimeEq;

/// The shortest secret taken (Stripe's signing secrets are 32 random bytes).
pub const SECRET_BYTES_MIN: usize = 16;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// The secret without surrounding white space; None if that leaves
    /// fewer than [`SECRET_BYTES_MIN`] bytes.
    pub fn new(bytes: &[u8]) -> Option<Secret> {
        let secret = bytes.trim_ascii();
        (secret.len() >= SECRET_BYTES_MIN).then(|| Secret(secret.into()))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The secret as a header field's value, when it is printable ASCII.
    pub fn as_field(&self) -> Option<&str> {
        std::str::from_utf8(&self.0)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_graphic()))
    }

    /// Whether `given` is the secret, in time that does not depend on where
    /// they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.ct_eq(given).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_trimmed_compared_whole_and_never_printed() {
        let secret = Secret::new(b"  0123456789abcdef\n").expect("16 bytes");
        assert!(secret.matches(b"0123456789abcdef"));
        assert!(!secret.matches(b"0123456789abcdeF"));
        assert!(!secret.matches(b"0123456789abcde"));
        assert_eq!(secret.as_field(), Some("0123456789abcdef"));
        assert!(Secret::new(b"short").is_none());
        assert_eq!(format!("{secret:?}"), "Secret(16 bytes)");
        assert_eq!(Secret::new(b"0123456789 abcdef").unwrap().as_field(), None);
    }
}
