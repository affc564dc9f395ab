//! The `bandwidth` capability: `runtimeConfig.bandwidth`, the pod's
//! `kubernetes.io/ingress-bandwidth` and `egress-bandwidth` annotations as
//! the runtime passes them, checked.
//!
//! CNI's CONVENTIONS.md spells it `{"ingressRate": …, "ingressBurst": …,
//! "egressRate": …, "egressBurst": …}`, rates in bits per second and
//! bursts in bits. What runtimes send differs from that:
//!
//! - containerd (through go-cni, whose `BandWidth` struct has no JSON
//!   tags) sends the Go field names, `IngressRate`, `IngressBurst`, …,
//!   with a burst of 4294967295 bits for each direction that has a rate
//!   and 0 for both fields of a direction without one. Go's decoder
//!   matches names case-insensitively, so the reference plugins never
//!   noticed; we match them the same way.
//! - CRI-O sends only the directions that have a rate, with a burst of
//!   34359738359 bits (just under 4 GiB).
//!
//! So a direction with neither a rate nor a burst (absent, `null` or 0) is
//! unlimited; a rate without a burst, or a burst without a rate, is an
//! error, as in the reference plugin.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CniError, code};

/// One direction's limit, in CNI's units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BandwidthLimit {
    /// Bits per second.
    pub rate: u64,
    /// Bits: how much may pass at once above the rate.
    pub burst: u64,
}

/// The limits to put on the pod's interface; `None`: unlimited that way.
/// What the executable sends the agent in [`crate::rpc::AddRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Traffic to the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<BandwidthLimit>,
    /// Traffic the pod sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<BandwidthLimit>,
}

/// Rates Kubernetes accepts in the annotations: 1 kbit/s to 1 Pbit/s
/// (kubelet's and containerd's `validateBandwidthIsReasonable`). Anything
/// outside is a typo or a unit mix-up.
pub const RATE_RANGE: std::ops::RangeInclusive<u64> = 1_000..=1_000_000_000_000_000;
/// Bursts: at least one frame at the smallest IPv4 MTU (68 + 14 bytes;
/// the agent checks the interface's real MTU when it shapes), and less
/// than 4 GiB, which tbf counts in 32 bits (the reference plugin's "burst
/// cannot be more than 4GB").
pub const BURST_RANGE: std::ops::Range<u64> = (8 * (68 + 14))..(8 * u32::MAX as u64);

impl Bandwidth {
    /// Reads and checks `runtimeConfig.bandwidth`: `Ok(None)` when it is
    /// absent or `null` or limits neither direction. Every error names
    /// the field.
    pub fn from_runtime_config(value: Option<&Value>) -> Result<Option<Bandwidth>, CniError> {
        let fields = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(fields)) => fields,
            Some(other) => {
                return Err(invalid(format!(
                    "runtimeConfig.bandwidth must be an object, not {other}"
                )));
            }
        };
        // Go's encoding/json matches field names case-insensitively; so
        // do we, and refuse a name given twice in two spellings.
        let mut seen: Vec<(String, &str, &Value)> = Vec::new();
        for (key, value) in fields {
            let folded = key.to_ascii_lowercase();
            if let Some((_, first, _)) = seen.iter().find(|(f, _, _)| *f == folded) {
                return Err(invalid(format!(
                    "runtimeConfig.bandwidth has both {first:?} and {key:?}"
                )));
            }
            seen.push((folded, key, value));
        }
        let get = |name: &str| {
            seen.iter()
                .find(|(f, _, _)| *f == name.to_ascii_lowercase())
                .map(|(_, _, v)| *v)
                .filter(|v| !v.is_null())
        };
        for subnets in ["shapedSubnets", "unshapedSubnets"] {
            if get(subnets).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!(
                        "runtimeConfig.bandwidth.{subnets}: hostnic shapes all of a pod's traffic; limits by subnet are not supported"
                    ),
                ));
            }
        }
        let bandwidth = Bandwidth {
            ingress: direction("ingress", &get)?,
            egress: direction("egress", &get)?,
        };
        Ok((bandwidth != Bandwidth::default()).then_some(bandwidth))
    }
}

/// One direction's rate and burst, checked.
fn direction<'a>(
    dir: &str,
    get: &dyn Fn(&str) -> Option<&'a Value>,
) -> Result<Option<BandwidthLimit>, CniError> {
    let (rate_name, burst_name) = (format!("{dir}Rate"), format!("{dir}Burst"));
    let number = |name: &str, unit: &str| match get(name) {
        None => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| {
            invalid(format!(
                "runtimeConfig.bandwidth.{name}: {v} is not a whole number of {unit}"
            ))
        }),
    };
    let rate = number(&rate_name, "bits per second")?;
    let burst = number(&burst_name, "bits")?;
    match (rate, burst) {
        (0, 0) => return Ok(None),
        (_, 0) => {
            return Err(invalid(format!(
                "runtimeConfig.bandwidth.{burst_name} is missing or 0 but {rate_name} is {rate}: a rate needs a burst, in bits"
            )));
        }
        (0, _) => {
            return Err(invalid(format!(
                "runtimeConfig.bandwidth.{rate_name} is missing or 0 but {burst_name} is {burst}: a burst needs a rate, in bits per second"
            )));
        }
        _ => {}
    }
    if !RATE_RANGE.contains(&rate) {
        return Err(invalid(format!(
            "runtimeConfig.bandwidth.{rate_name}: {rate} bits per second is outside {}..={} (1 kbit/s to 1 Pbit/s, what Kubernetes accepts)",
            RATE_RANGE.start(),
            RATE_RANGE.end()
        )));
    }
    if !BURST_RANGE.contains(&burst) {
        return Err(invalid(format!(
            "runtimeConfig.bandwidth.{burst_name}: {burst} bits is outside {}..{} (one minimal frame to 4 GiB)",
            BURST_RANGE.start, BURST_RANGE.end
        )));
    }
    Ok(Some(BandwidthLimit { rate, burst }))
}

fn invalid(msg: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<Option<Bandwidth>, CniError> {
        Bandwidth::from_runtime_config(Some(&v))
    }

    fn limit(rate: u64, burst: u64) -> Option<BandwidthLimit> {
        Some(BandwidthLimit { rate, burst })
    }

    #[test]
    fn what_containerd_and_crio_send() {
        // containerd 1.6/2.x for kubernetes.io/ingress-bandwidth: 10M and
        // egress-bandwidth: 10M: go-cni's BandWidth, marshalled without
        // JSON tags.
        let both = json!({"IngressRate": 10_000_000u64, "IngressBurst": 4_294_967_295u64,
                          "EgressRate": 10_000_000u64, "EgressBurst": 4_294_967_295u64});
        assert_eq!(
            parse(both).unwrap(),
            Some(Bandwidth {
                ingress: limit(10_000_000, 4_294_967_295),
                egress: limit(10_000_000, 4_294_967_295),
            })
        );
        // Only the ingress annotation: zeros for egress.
        let ingress = json!({"IngressRate": 1_000_000u64, "IngressBurst": 4_294_967_295u64,
                             "EgressRate": 0, "EgressBurst": 0});
        assert_eq!(
            parse(ingress).unwrap(),
            Some(Bandwidth {
                ingress: limit(1_000_000, 4_294_967_295),
                egress: None,
            })
        );
        // CRI-O: only what is limited, with its just-under-4-GiB burst.
        let crio = json!({"egressRate": 2_000_000u64, "egressBurst": 34_359_738_359u64});
        assert_eq!(
            parse(crio).unwrap(),
            Some(Bandwidth {
                ingress: None,
                egress: limit(2_000_000, 34_359_738_359),
            })
        );
    }

    #[test]
    fn the_conventions_spelling_any_subset_and_nothing() {
        // CONVENTIONS.md's own example. Its 200-byte bursts pass here;
        // shaping refuses them on an interface whose frames are larger.
        let conventions = json!({"ingressRate": 2048, "ingressBurst": 1600, "egressRate": 4096, "egressBurst": 1600});
        assert_eq!(
            parse(conventions).unwrap(),
            Some(Bandwidth {
                ingress: limit(2048, 1600),
                egress: limit(4096, 1600)
            })
        );
        let subset = json!({"ingressRate": 2048, "ingressBurst": 16000});
        assert_eq!(
            parse(subset).unwrap(),
            Some(Bandwidth {
                ingress: limit(2048, 16000),
                egress: None
            })
        );
        for none in [
            json!(null),
            json!({}),
            json!({"ingressRate": null, "egressBurst": null}),
            json!({"IngressRate": 0, "IngressBurst": 0, "EgressRate": 0, "EgressBurst": 0}),
            json!({"shapedSubnets": [], "unshapedSubnets": null}),
        ] {
            assert_eq!(parse(none.clone()).unwrap(), None, "{none}");
        }
        assert_eq!(Bandwidth::from_runtime_config(None).unwrap(), None);
    }

    #[test]
    fn errors_name_the_field() {
        for (bad, field, code) in [
            (json!({"ingressRate": 10_000_000}), "ingressBurst", 7),
            (json!({"egressBurst": 100_000}), "egressRate", 7),
            (
                json!({"IngressRate": 10_000_000, "IngressBurst": 0}),
                "ingressBurst",
                7,
            ),
            (
                json!({"egressRate": 999, "egressBurst": 100_000}),
                "egressRate",
                7,
            ),
            (
                json!({"egressRate": 2_000_000_000_000_000u64, "egressBurst": 100_000}),
                "egressRate",
                7,
            ),
            (
                json!({"ingressRate": 10_000_000, "ingressBurst": 8}),
                "ingressBurst",
                7,
            ),
            (
                json!({"ingressRate": 10_000_000, "ingressBurst": 34_359_738_360u64}),
                "ingressBurst",
                7,
            ),
            (
                json!({"ingressRate": -1, "ingressBurst": 100_000}),
                "ingressRate",
                7,
            ),
            (
                json!({"ingressRate": 1.5e7, "ingressBurst": 100_000}),
                "ingressRate",
                7,
            ),
            (
                json!({"ingressRate": "10M", "ingressBurst": 100_000}),
                "ingressRate",
                7,
            ),
            (
                json!({"ingressRate": 1, "IngressRate": 1}),
                "ingressRate",
                7,
            ),
            (json!({"shapedSubnets": ["10.0.0.0/8"]}), "shapedSubnets", 2),
            (json!("10M"), "bandwidth", 7),
        ] {
            let e = parse(bad.clone()).unwrap_err();
            assert_eq!(e.code, code, "{bad}: {e}");
            assert!(
                e.msg.to_lowercase().contains(&field.to_lowercase()),
                "{bad}: {e}"
            );
            assert!(e.msg.starts_with("runtimeConfig.bandwidth"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_wire_form_is_compact() {
        let b = Bandwidth {
            ingress: limit(10_000_000, 4_294_967_295),
            egress: None,
        };
        let v = serde_json::to_value(b).unwrap();
        assert_eq!(
            v,
            json!({"ingress": {"rate": 10_000_000, "burst": 4_294_967_295u64}})
        );
        assert_eq!(serde_json::from_value::<Bandwidth>(v).unwrap(), b);
    }
}
