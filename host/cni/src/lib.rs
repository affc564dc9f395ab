//! The `hostnic` CNI executable, as a library so tests can drive it in
//! process for every spec version.
//!
//! It is a thin shell: validate the call, open the netns, send one request to
//! `hostnic-agent` (the netns travels as a file descriptor) and encode the
//! answer for the runtime's `cniVersion`. No async runtime, no policy, no
//! netlink: it is exec'd for every pod operation and must start fast.

mod agent;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostnic_proto::cni::{self, CniArgs, CniError, NetConf, Verb, Version, code};
use hostnic_proto::rpc::{
    self, AddRequest, CheckRequest, DelRequest, GcRequest, Op, Pod, Reply, Target,
};
use serde_json::Value;

/// Largest stdin we read. A conflist entry with a prevResult and a pod's
/// annotations is a few KiB; anything near this is not a CNI config.
pub const MAX_STDIN: usize = 1 << 20;

/// How long to wait for the agent's answer unless `timeoutSeconds` says
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to keep trying to reach an agent that does not listen unless
/// `connectTimeoutSeconds` says otherwise. The agent itself serves 50–140
/// ms after its exec (testbed, debug build), but in a rolling update a
/// node has none from the old agent's SIGTERM until the new pod's agent
/// binds: the DaemonSet controller, kubelet and the init container made
/// that 1.3–3.5 s in 14 node restarts on the cluster testbed (debug
/// build, 2 cores), and it grows on a loaded node or while a new image is
/// pulled. 30 s is ~9 times the worst seen, and with [`DEFAULT_TIMEOUT`] a
/// call stays well inside the 4 minutes kubelet gives a sandbox.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `CNI_*` environment of one call.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok();
        Env {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
        }
    }
}

/// What the process prints and how it exits.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Exit 0, printing the value if there is one.
    Success(Option<Value>),
    /// Exit 1, printing the error JSON.
    Failure(Value),
}

/// Reads at most [`MAX_STDIN`] bytes, refusing more.
pub fn read_stdin(r: &mut impl Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    r.take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            CniError::new(
                code::IO,
                format!("reading the network configuration from stdin: {e}"),
            )
        })?;
    if buf.len() > MAX_STDIN {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("the network configuration on stdin is larger than {MAX_STDIN} bytes"),
        ));
    }
    Ok(buf)
}

/// Runs one CNI call. Every failure becomes the CNI error JSON, stamped with
/// the config's `cniVersion` when we got that far.
pub fn run(env: &Env, stdin: Result<Vec<u8>, CniError>) -> Outcome {
    let mut version_label = Version::LATEST.as_str().to_string();
    match dispatch(env, stdin, &mut version_label) {
        Ok(v) => Outcome::Success(v),
        Err(e) => Outcome::Failure(e.to_json(&version_label)),
    }
}

fn dispatch(
    env: &Env,
    stdin: Result<Vec<u8>, CniError>,
    version_label: &mut String,
) -> Result<Option<Value>, CniError> {
    let verb = Verb::parse(required(&env.command, "CNI_COMMAND")?)?;
    let stdin = stdin?;
    if verb == Verb::Version {
        return Ok(Some(version_reply(&stdin)));
    }
    let decoded = match verb {
        Verb::Del => NetConf::decode_for_del(&stdin),
        _ => NetConf::decode(&stdin).map(|c| (c, Vec::new())),
    };
    let (conf, ignored) = decoded.inspect_err(|_| {
        // Stamp the error with the version the runtime asked for, if any
        // part of stdin says it.
        if let Some(v) = asked_version(&stdin) {
            *version_label = v;
        }
    })?;
    version_label.clone_from(&conf.cni_version);
    for warning in &ignored {
        // stdout is the runtime's to parse; stderr lands in its log.
        eprintln!("hostnic: {warning}");
    }
    match verb {
        Verb::Del => conf.validate_for_del()?,
        _ => conf.validate()?,
    }
    let version = Version::parse(&conf.cni_version)?;
    if !version.allows(verb) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version} does not have the {verb:?} verb"),
        ));
    }
    let agent = agent::Client {
        socket: conf
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(rpc::DEFAULT_SOCKET)),
        timeout: conf
            .timeout_seconds
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
        // STATUS is polled every few seconds and must answer at once: an
        // agent that does not listen now is "not available" now.
        wait: match verb {
            Verb::Status => Duration::ZERO,
            _ => conf
                .connect_timeout_seconds
                .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_secs),
        },
    };
    match verb {
        Verb::Add => add(env, &conf, version, &agent),
        Verb::Del => del(env, &conf, &agent),
        Verb::Check => check(env, &conf, &agent),
        Verb::Gc => gc(&conf, &agent),
        Verb::Status => status(&agent),
        Verb::Version => unreachable!("handled above"),
    }
}

fn add(
    env: &Env,
    conf: &NetConf,
    version: Version,
    agent: &agent::Client,
) -> Result<Option<Value>, CniError> {
    let target = target(env, conf, true)?;
    let netns = open_netns(target.netns.as_deref().unwrap_or_default())?;
    let args = CniArgs::parse(env.args.as_deref().unwrap_or_default())?;
    let op = Op::Add(AddRequest {
        target,
        pod: Pod {
            namespace: args.pod_namespace,
            name: args.pod_name,
            uid: args.pod_uid,
            infra_container_id: args.infra_container_id,
            annotations: conf.runtime_config.pod_annotations.clone(),
        },
        mtu: conf.mtu,
        routes: conf.ipam.routes.clone(),
        vxnets: conf.vxnets.clone(),
        default_route: conf.default_route,
        ips: conf.requested_ips()?,
        mac: conf.requested_mac()?,
        hooks: conf.hooks.clone(),
        bandwidth: conf.requested_bandwidth()?,
    });
    match agent.call(op, Some(&netns))? {
        Reply::Added(result) => Ok(Some(result.encode(version, conf.prev_result.as_ref()))),
        other => Err(unexpected(&other)),
    }
}

fn del(env: &Env, conf: &NetConf, agent: &agent::Client) -> Result<Option<Value>, CniError> {
    let target = target(env, conf, false)?;
    // DEL must succeed when the netns is already gone: containerd's second
    // DEL (on RemovePodSandbox) comes with CNI_NETNS empty.
    let netns = match target.netns.as_deref() {
        Some(path) => match open_netns(path) {
            Ok(f) => Some(f),
            Err(e) if e.code == code::UNKNOWN_CONTAINER => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    match agent.call(Op::Del(DelRequest { target }), netns.as_ref())? {
        Reply::Deleted => Ok(None),
        other => Err(unexpected(&other)),
    }
}

fn check(env: &Env, conf: &NetConf, agent: &agent::Client) -> Result<Option<Value>, CniError> {
    let target = target(env, conf, true)?;
    let netns = open_netns(target.netns.as_deref().unwrap_or_default())?;
    CniArgs::parse(env.args.as_deref().unwrap_or_default())?;
    let op = Op::Check(CheckRequest {
        target,
        prev_result: conf.prev_result.clone(),
    });
    match agent.call(op, Some(&netns))? {
        Reply::Checked => Ok(None),
        other => Err(unexpected(&other)),
    }
}

fn gc(conf: &NetConf, agent: &agent::Client) -> Result<Option<Value>, CniError> {
    // Without the list we would release every attachment on the node.
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs \"cni.dev/valid-attachments\" in the network configuration; refusing to release everything",
        )
    })?;
    let op = Op::Gc(GcRequest {
        network: conf.name.clone(),
        valid,
    });
    match agent.call(op, None)? {
        Reply::Collected { .. } => Ok(None),
        other => Err(unexpected(&other)),
    }
}

fn status(agent: &agent::Client) -> Result<Option<Value>, CniError> {
    match agent.call(Op::Status, None) {
        Ok(Reply::Status { .. }) => Ok(None),
        Ok(other) => Err(unexpected(&other)),
        // The agent being unreachable means no ADD can succeed now.
        Err(e) if e.code == code::TRY_AGAIN_LATER => Err(CniError {
            code: code::NOT_AVAILABLE,
            ..e
        }),
        Err(e) => Err(e),
    }
}

fn target(env: &Env, conf: &NetConf, netns_required: bool) -> Result<Target, CniError> {
    let container_id = required(&env.container_id, "CNI_CONTAINERID")?;
    cni::validate_container_id(container_id)?;
    let ifname = required(&env.ifname, "CNI_IFNAME")?;
    cni::validate_ifname(ifname)?;
    let netns = if netns_required {
        Some(required(&env.netns, "CNI_NETNS")?.to_string())
    } else {
        env.netns.clone().filter(|s| !s.is_empty())
    };
    Ok(Target {
        network: conf.name.clone(),
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        netns,
    })
}

fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, CniError> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(CniError::new(
            code::INVALID_ENV,
            format!("{name} is not set"),
        )),
    }
}

/// Opens the pod's netns so it can be passed to the agent by descriptor.
fn open_netns(path: &str) -> Result<File, CniError> {
    File::open(Path::new(path)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("CNI_NETNS {path:?} does not exist; the container's network namespace is gone"),
        ),
        _ => CniError::new(code::IO, format!("opening CNI_NETNS {path:?}: {e}")),
    })
}

/// VERSION reads only `cniVersion`, and tolerates anything else on stdin.
fn version_reply(stdin: &[u8]) -> Value {
    let asked = asked_version(stdin).filter(|v| Version::parse(v).is_ok());
    cni::version_info(asked.as_deref().unwrap_or(Version::LATEST.as_str()))
}

/// The `cniVersion` of stdin when it starts with a JSON object with one.
fn asked_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::Deserializer::from_slice(stdin)
        .into_iter()
        .next()?
        .ok()?;
    Some(v.get("cniVersion")?.as_str()?.to_string())
}

fn unexpected(reply: &Reply) -> CniError {
    CniError::new(
        code::INTERNAL,
        format!(
            "hostnic-agent answered with an unexpected reply {reply:?}; are the executable and the agent the same release?"
        ),
    )
}
