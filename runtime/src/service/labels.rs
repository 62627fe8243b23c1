//! Labels and equality selectors, with Kubernetes' rules for what a label may be.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A label's name part: 1 to 63 letters, digits, `-`, `_`, `.`, alphanumeric at both ends.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Checks a label key: `[PREFIX/]NAME`, the prefix a lowercase DNS subdomain.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !crate::netstack::is_dns_name(p) || p.ends_with('.') || p.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("label key {key:?}: the prefix before `/` must be a lowercase DNS subdomain"));
        }
    }
    if !is_label_name(name) {
        return Err(format!(
            "label key {key:?}: the name must be 1 to 63 letters, digits, `-`, `_` or `.`, beginning and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label value: empty, or what a key's name part may be.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!("label value {value:?}: use at most 63 letters, digits, `-`, `_` or `.`, beginning and ending with a letter or digit"))
    }
}

/// Picks the pods that carry every one of its labels (a Service's `selector`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Selector(pub BTreeMap<String, String>);

impl Selector {
    /// Whether `labels` has every pair of the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&pairs.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_follow_kubernetes() {
        for ok in ["app", "app.kubernetes.io/name", "a_b.c-d", "example.com/x"] {
            assert!(check_label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Example.com/x", "/a", "a/", "a/b/c", &"x".repeat(64)] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_label_value("").is_ok() && check_label_value("v1.2_x").is_ok());
        assert!(check_label_value("a b").is_err() && check_label_value("x-").is_err());
    }

    #[test]
    fn a_selector_needs_every_pair() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")].map(|(k, v)| (k.into(), v.into())).into();
        let sel = |pairs: &[(&str, &str)]| Selector(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        assert!(sel(&[("app", "web")]).matches(&labels));
        assert!(sel(&[("app", "web"), ("tier", "front")]).matches(&labels));
        assert!(!sel(&[("app", "web"), ("tier", "back")]).matches(&labels));
        assert!(!sel(&[("role", "x")]).matches(&labels));
        assert_eq!(sel(&[("app", "web"), ("tier", "front")]).to_string(), "app=web,tier=front");
    }
}
