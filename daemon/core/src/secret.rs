//! A string that never reaches a log, an error or a peer by accident.

use std::fmt;

/// A credential (HF token, access key). `Debug` and `Display` print `***`; the value is only
/// reachable through [`Secret::expose`], which call sites use to build an auth header.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value, for building a request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_prints() {
        let s = super::Secret::new("hf_abcdef");
        assert!(!format!("{s} {s:?}").contains("hf_abcdef"));
        assert_eq!(s.expose(), "hf_abcdef");
    }
}
