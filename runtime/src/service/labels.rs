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
    /// Whether it selects a pod with `labels`: an empty selector (a service without
    /// one, whose endpoints are given by hand) selects none.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.0.is_empty() && self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// How a label requirement compares (Kubernetes' `matchExpressions` operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRequirement {
    pub key: String,
    pub op: LabelOp,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A Kubernetes `LabelSelector`: `matchLabels` and `matchExpressions`, all of which
/// must hold; the empty one selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
}

impl LabelSelector {
    /// Checks k8s-openapi's selector (at `field`) into one; an error is the field at
    /// fault and what is wrong with it.
    pub fn checked(given: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector, field: &str) -> Result<Self, (String, String)> {
        let match_labels = given.match_labels.unwrap_or_default();
        for (k, v) in &match_labels {
            check_label_key(k).and_then(|()| check_label_value(v)).map_err(|r| (format!("{field}.matchLabels"), r))?;
        }
        let mut match_expressions = Vec::new();
        for (i, e) in given.match_expressions.unwrap_or_default().into_iter().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            check_label_key(&e.key).map_err(|r| (format!("{at}.key"), r))?;
            let op = match e.operator.as_str() {
                "In" => LabelOp::In,
                "NotIn" => LabelOp::NotIn,
                "Exists" => LabelOp::Exists,
                "DoesNotExist" => LabelOp::DoesNotExist,
                o => return Err((format!("{at}.operator"), format!("{o:?} is not In, NotIn, Exists or DoesNotExist"))),
            };
            let values = e.values.unwrap_or_default();
            match op {
                LabelOp::In | LabelOp::NotIn if values.is_empty() => {
                    return Err((format!("{at}.values"), format!("{} needs at least one value", e.operator)))
                }
                LabelOp::Exists | LabelOp::DoesNotExist if !values.is_empty() => {
                    return Err((format!("{at}.values"), format!("must be empty for {}", e.operator)))
                }
                _ => {}
            }
            for v in &values {
                check_label_value(v).map_err(|r| (format!("{at}.values"), r))?;
            }
            match_expressions.push(LabelRequirement { key: e.key, op, values });
        }
        Ok(Self { match_labels, match_expressions })
    }

    /// Whether `labels` meets every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.op {
                    LabelOp::In => value.is_some_and(|v| r.values.contains(v)),
                    LabelOp::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    LabelOp::Exists => value.is_some(),
                    LabelOp::DoesNotExist => value.is_none(),
                }
            })
    }
}

impl std::fmt::Display for LabelSelector {
    /// As kubectl shows one: `app=web,tier in (a,b),!x`; `<all>` for the empty one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            parts.push(match r.op {
                LabelOp::In => format!("{} in ({})", r.key, r.values.join(",")),
                LabelOp::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                LabelOp::Exists => r.key.clone(),
                LabelOp::DoesNotExist => format!("!{}", r.key),
            });
        }
        if parts.is_empty() {
            f.write_str("<all>")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("<none>"); // as kubectl shows a service without one
        }
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
        // A service without a selector gets its endpoints by hand, never from pods.
        assert!(!sel(&[]).matches(&labels));
        assert_eq!(sel(&[("app", "web"), ("tier", "front")]).to_string(), "app=web,tier=front");
    }

    #[test]
    fn label_selectors_have_kubernetes_operators() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")].map(|(k, v)| (k.into(), v.into())).into();
        let expr = |key: &str, op: &str, values: &[&str]| meta::LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        };
        let sel = |e: Vec<meta::LabelSelectorRequirement>| {
            LabelSelector::checked(meta::LabelSelector { match_expressions: Some(e), match_labels: None }, "spec.podSelector")
        };
        assert!(sel(vec![expr("tier", "In", &["front", "back"])]).unwrap().matches(&labels));
        assert!(!sel(vec![expr("tier", "NotIn", &["front"])]).unwrap().matches(&labels));
        assert!(sel(vec![expr("role", "NotIn", &["x"]), expr("app", "Exists", &[])]).unwrap().matches(&labels));
        assert!(!sel(vec![expr("app", "DoesNotExist", &[])]).unwrap().matches(&labels));
        assert!(LabelSelector::default().matches(&labels) && LabelSelector::default().to_string() == "<all>");
        let e = sel(vec![expr("app", "In", &[])]).unwrap_err();
        assert_eq!(e, ("spec.podSelector.matchExpressions[0].values".into(), "In needs at least one value".into()));
        let e = sel(vec![expr("app", "Equals", &["x"])]).unwrap_err();
        assert_eq!(e.0, "spec.podSelector.matchExpressions[0].operator");
        assert_eq!(sel(vec![expr("tier", "In", &["a", "b"]), expr("x", "DoesNotExist", &[])]).unwrap().to_string(), "tier in (a,b),!x");
    }
}
