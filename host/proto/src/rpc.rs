//! The agent RPC: what `hostnic` sends over the agent's unix socket.
//!
//! # Wire format (version 1)
//!
//! One request and one response per connection. Each is a *frame*: a 4-byte
//! big-endian length followed by that many bytes of UTF-8 JSON. Frames are
//! at most [`MAX_FRAME`] bytes; the agent closes a connection that announces
//! more. For ADD and CHECK (and DEL when the runtime still has a netns) the
//! request frame carries the pod's network namespace as one file descriptor
//! in an `SCM_RIGHTS` control message attached to its first byte, so the
//! agent never depends on the netns path being visible in its mount
//! namespace. The path is sent too, but only to be recorded and reported.
//!
//! ```json
//! {"version":1,"op":"add","target":{"network":"hostnic","container_id":"c1","ifname":"eth0","netns":"/var/run/netns/p"},
//!  "pod":{"namespace":"default","name":"web","uid":"…","annotations":{}},"mtu":1500,"routes":[],
//!  "bandwidth":{"ingress":{"rate":10000000,"burst":4294967295}}}
//! {"version":1,"result":{"Ok":{"added":{"interface":{…},"ips":[…],"routes":[…]}}}}
//! {"version":1,"result":{"Err":{"code":101,"msg":"no free NIC on this node","details":"…"}}}
//! ```
//!
//! # Compatibility
//!
//! During a DaemonSet rollout the executable on the host and the agent may
//! be one release apart. Within a protocol version fields are only ever
//! added, with defaults, and unknown fields are ignored on both sides. A
//! change that cannot be made that way bumps [`PROTOCOL_VERSION`]; the agent
//! answers a request of a version it does not speak with CNI error 11 and a
//! message naming both versions, so the runtime retries after the rollout.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni::{AddResult, AttachmentKey, Bandwidth, CniError, NetworkHooks, RouteTemplate};

pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts. An ADD request is a few KiB even with
/// many annotations; a GC request lists every attachment on the node.
pub const MAX_FRAME: usize = 1 << 20;

/// Where the agent listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hostnic/agent.sock";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub op: Op,
}

// One request per connection, decoded once: the size of the ADD variant
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Add(AddRequest),
    Del(DelRequest),
    Check(CheckRequest),
    Gc(GcRequest),
    Status,
    /// The agent's latest policy decisions, oldest first (for `hostnic-agent
    /// policy decisions` and `policy replay`). Not a CNI verb.
    Decisions {
        /// At most this many calls; all that fit in a frame without it.
        #[serde(default)]
        limit: Option<u32>,
    },
    /// The agent's state for `hostnic-agent status`: its NICs, guests,
    /// latest ADD decisions and cloud calls. Not a CNI verb.
    Inspect,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Add(_) => "add",
            Op::Del(_) => "del",
            Op::Check(_) => "check",
            Op::Gc(_) => "gc",
            Op::Status => "status",
            Op::Decisions { .. } => "decisions",
            Op::Inspect => "inspect",
        }
    }
}

/// Which attachment a request is about: the CNI key (container, ifname)
/// within a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The runtime's netns path, if it gave one. Informational: the netns
    /// itself travels as a file descriptor.
    #[serde(default)]
    pub netns: Option<String>,
}

/// What the runtime told us about the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub infra_container_id: Option<String>,
    /// From the `io.kubernetes.cri.pod-annotations` capability.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddRequest {
    pub target: Target,
    #[serde(default)]
    pub pod: Pod,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub routes: Vec<RouteTemplate>,
    /// The network's vxnets (its config's `vxnets`); `None`: the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxnets: Option<Vec<String>>,
    /// Whether the attachment carries the pod's default route; `None`:
    /// when the pod has none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_route: Option<bool>,
    /// The `ips` capability: the pod must have one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<std::net::Ipv4Addr>,
    /// The `mac` capability: the node's NIC with this MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The network's own guest configs (its config's `hooks`).
    #[serde(default, skip_serializing_if = "NetworkHooks::is_empty")]
    pub hooks: NetworkHooks,
    /// The `bandwidth` capability, checked: the limits to put on the
    /// pod's interface. `None` (and absent from the frame): unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DelRequest {
    pub target: Target,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckRequest {
    pub target: Target,
    /// The result the runtime cached from ADD (its `prevResult`), checked
    /// against the agent's record.
    #[serde(default)]
    pub prev_result: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcRequest {
    pub network: String,
    pub valid: Vec<AttachmentKey>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    pub result: Result<Reply, CniError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Added(AddResult),
    Deleted,
    Checked,
    Collected {
        released: u32,
    },
    Status {
        free_nics: u32,
    },
    /// One JSON object per hook call (the agent's `decisions::Recorded`).
    Decisions {
        calls: Vec<Value>,
    },
    /// The agent's `status::Inspection`, as JSON.
    Inspection {
        state: Value,
    },
}

/// Serialises `msg` as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes exceeds the {MAX_FRAME}-byte frame limit",
                body.len()
            ),
        ));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length announced by a frame header, refusing oversized frames.
pub fn frame_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer announced a {len}-byte frame; the limit is {MAX_FRAME}"),
        ));
    }
    Ok(len)
}

/// Reads one frame from a blocking reader and decodes it.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<T> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let mut body = vec![0u8; frame_len(header)?];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one frame to a blocking writer.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    w.write_all(&encode_frame(msg)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape_is_stable() {
        let req = Request {
            version: PROTOCOL_VERSION,
            op: Op::Del(DelRequest {
                target: Target {
                    network: "n".into(),
                    container_id: "c".into(),
                    ifname: "eth0".into(),
                    netns: None,
                },
            }),
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["op"], "del");
        assert_eq!(v["target"]["container_id"], "c");
        // Unknown fields from a newer peer are ignored.
        let newer = r#"{"version":1,"op":"status","from_the_future":true}"#;
        let parsed: Request = serde_json::from_str(newer).unwrap();
        assert!(matches!(parsed.op, Op::Status));
    }

    #[test]
    fn add_requests_carry_bandwidth_only_when_there_is_a_limit() {
        use crate::cni::BandwidthLimit;
        // What an executable of the previous release sends: no limits.
        let old = r#"{"version":1,"op":"add","target":{"network":"n","container_id":"c","ifname":"eth0"}}"#;
        let Op::Add(add) = serde_json::from_str::<Request>(old).unwrap().op else {
            panic!("not an add")
        };
        assert_eq!(add.bandwidth, None);
        // Unlimited, the frame is the previous release's.
        let frame = |add: &AddRequest| {
            serde_json::to_value(Request {
                version: PROTOCOL_VERSION,
                op: Op::Add(add.clone()),
            })
            .unwrap()
        };
        assert!(frame(&add).get("bandwidth").is_none());
        let mut limited = add;
        limited.bandwidth = Some(Bandwidth {
            ingress: Some(BandwidthLimit {
                rate: 10_000_000,
                burst: 4_294_967_295,
            }),
            egress: None,
        });
        let v = frame(&limited);
        assert_eq!(
            v["bandwidth"],
            serde_json::json!({"ingress": {"rate": 10_000_000, "burst": 4_294_967_295u64}})
        );
        let Op::Add(back) = serde_json::from_value::<Request>(v).unwrap().op else {
            panic!("not an add")
        };
        assert_eq!(back.bandwidth, limited.bandwidth);
    }

    #[test]
    fn frames_round_trip_and_refuse_oversize() {
        let resp = Response {
            version: 1,
            result: Ok(Reply::Status { free_nics: 3 }),
        };
        let frame = encode_frame(&resp).unwrap();
        let back: Response = read_frame(&mut frame.as_slice()).unwrap();
        assert_eq!(back.result, Ok(Reply::Status { free_nics: 3 }));
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            frame_len(huge).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let truncated = &frame[..frame.len() - 1];
        assert!(read_frame::<Response>(&mut &truncated[..]).is_err());
    }
}
