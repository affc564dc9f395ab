//! Label selectors as NetworkPolicy uses them (`metav1.LabelSelector`):
//! every `matchLabels` pair and every `matchExpressions` requirement must
//! hold; an empty selector selects everything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

/// Whether `selector` selects an object labelled `labels`. An operator the
/// API does not define selects nothing (the API server refuses such a
/// policy, so this only guards against a cache holding one).
pub fn matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    pairs
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(json: serde_json::Value) -> LabelSelector {
        serde_json::from_value(json).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selects_all_and_every_requirement_must_hold() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        assert!(matches(&selector(serde_json::json!({})), &web));
        assert!(matches(&selector(serde_json::json!({})), &Labels::new()));
        assert!(matches(
            &selector(serde_json::json!({"matchLabels": {"app": "web"}})),
            &web
        ));
        assert!(!matches(
            &selector(serde_json::json!({"matchLabels": {"app": "web", "tier": "back"}})),
            &web
        ));
        let exprs = |op: &str, values: &[&str]| {
            selector(serde_json::json!({"matchExpressions": [
                {"key": "tier", "operator": op, "values": values}
            ]}))
        };
        assert!(matches(&exprs("In", &["front", "mid"]), &web));
        assert!(!matches(&exprs("In", &["back"]), &web));
        assert!(!matches(&exprs("NotIn", &["front"]), &web));
        // NotIn holds for an object without the key.
        assert!(matches(&exprs("NotIn", &["front"]), &Labels::new()));
        assert!(matches(&exprs("Exists", &[]), &web));
        assert!(!matches(&exprs("DoesNotExist", &[]), &web));
        assert!(matches(&exprs("DoesNotExist", &[]), &Labels::new()));
        assert!(!matches(&exprs("Gt", &["1"]), &web));
    }
}
