//! What a pod's table has counted, read from its listing
//! (libnftables-json(5)): the packets each policy rule admitted and the
//! packets refused, so a dropped connection can be traced to the rules
//! the pod has. Pure, so it is tested without a kernel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::render::DENIED;

/// Packets and bytes one or more rules counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// A pod's counters: by rule (`<namespace>/<policy> <direction> <rule>`,
/// the rules' comments), and what no policy allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rules: BTreeMap<String, Count>,
    pub denied: Count,
}

impl Counters {
    /// Every packet a policy rule admitted.
    pub fn allowed(&self) -> Count {
        self.rules.values().fold(Count::default(), |a, c| Count {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        })
    }
}

/// The counters of `listing` (`nft -j list table …`); rules without a
/// comment or a counter (the fixed ones) are not counted.
pub fn read(listing: &str) -> Result<Counters, serde_json::Error> {
    #[derive(Deserialize)]
    struct Listing {
        nftables: Vec<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Rule {
        comment: Option<String>,
        #[serde(default)]
        expr: Vec<serde_json::Value>,
    }
    let mut out = Counters::default();
    for item in serde_json::from_str::<Listing>(listing)?.nftables {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let rule = Rule::deserialize(rule)?;
        let Some(comment) = rule.comment else {
            continue;
        };
        let Some(counted) = rule.expr.iter().find_map(|e| e.get("counter")) else {
            continue;
        };
        let counted = Count::deserialize(counted)?;
        let into = if comment == DENIED {
            &mut out.denied
        } else {
            out.rules.entry(comment).or_default()
        };
        into.packets += counted.packets;
        into.bytes += counted.bytes;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing as libnftables 1.0.6 prints it (trimmed to what is
    /// read): a fixed rule, two lines of one policy rule, the two
    /// refusing lines.
    const LISTING: &str = r#"{"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "hostnic-policy", "handle": 1}},
        {"rule": {"family": "inet", "table": "hostnic-policy", "chain": "ingress", "handle": 5,
                  "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": null}]}},
        {"rule": {"family": "inet", "table": "hostnic-policy", "chain": "ingress", "handle": 9,
                  "comment": "web/allow-db ingress 0",
                  "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"accept": null}]}},
        {"rule": {"family": "inet", "table": "hostnic-policy", "chain": "ingress", "handle": 10,
                  "comment": "web/allow-db ingress 0",
                  "expr": [{"counter": {"packets": 2, "bytes": 120}}, {"accept": null}]}},
        {"rule": {"family": "inet", "table": "hostnic-policy", "chain": "ingress", "handle": 11,
                  "comment": "denied",
                  "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"reject": {"type": "tcp reset"}}]}},
        {"rule": {"family": "inet", "table": "hostnic-policy", "chain": "egress", "handle": 12,
                  "comment": "denied",
                  "expr": [{"counter": {"packets": 1, "bytes": 84}}, {"reject": null}]}}
    ]}"#;

    #[test]
    fn rules_are_summed_by_comment_and_refusals_apart() {
        let c = read(LISTING).unwrap();
        assert_eq!(
            c.rules,
            BTreeMap::from([(
                "web/allow-db ingress 0".to_string(),
                Count {
                    packets: 5,
                    bytes: 300
                }
            )])
        );
        assert_eq!(
            c.denied,
            Count {
                packets: 8,
                bytes: 504
            }
        );
        assert_eq!(c.allowed().packets, 5);
    }

    #[test]
    fn a_listing_that_is_not_one_is_an_error() {
        assert!(read("table inet hostnic-policy {}").is_err());
        assert_eq!(read(r#"{"nftables": []}"#).unwrap(), Counters::default());
    }
}
