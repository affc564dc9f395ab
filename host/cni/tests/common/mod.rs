//! What the executable's test files share.

use hostnic_proto::cni::{AddResult, Interface, IpConfig, Route};
use hostnic_proto::rpc::Reply;

/// Any process may open its own netns: no root needed for these tests.
pub const NETNS: &str = "/proc/self/ns/net";

/// The fake agent's answer to an ADD.
pub fn added() -> Reply {
    Reply::Added(AddResult {
        interface: Interface {
            name: "eth0".into(),
            mac: "52:54:00:aa:bb:cc".into(),
            sandbox: NETNS.into(),
            mtu: 1450,
        },
        ips: vec![IpConfig {
            address: "10.0.1.7/24".parse().unwrap(),
            gateway: Some("10.0.1.1".parse().unwrap()),
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: Some("10.0.1.1".parse().unwrap()),
        }],
    })
}
