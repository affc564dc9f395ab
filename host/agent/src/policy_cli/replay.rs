//! `policy decisions` and `policy replay`: the decisions a running agent
//! recorded, and where a candidate module would decide differently on the
//! same facts.
//!
//! A replay runs in a fresh sandbox, as a swapped-in module would start:
//! a guest that keeps state in the kv store (a rotation) starts from none,
//! so its first answers may differ for that reason alone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use hostnic_policy::{LoadError, PolicyEngine};
use hostnic_proto::rpc::{Op, Reply};

use super::{AnyHook, config_for};
use crate::decisions::Recorded;
use crate::facts::{HookName, show_answer};

pub fn fetch_decisions(socket: &Path, limit: Option<u32>) -> anyhow::Result<Vec<Recorded>> {
    let response = crate::client::call(socket, Op::Decisions { limit }, Duration::from_secs(10))
        .with_context(|| format!("asking the agent at {} for its decisions", socket.display()))?;
    match response.result {
        Ok(Reply::Decisions { calls }) => calls
            .into_iter()
            .map(|c| serde_json::from_value(c).context("decoding a recorded decision"))
            .collect(),
        Ok(other) => bail!("the agent answered {other:?} to a decisions request"),
        Err(e) => bail!("the agent refused: {e}"),
    }
}

pub fn print_decisions(socket: &Path, limit: Option<u32>) -> anyhow::Result<()> {
    for d in fetch_decisions(socket, limit)? {
        println!("{}", serde_json::to_string(&d)?);
    }
    Ok(())
}

/// Reads decisions saved by `policy decisions` (JSON lines; blank lines
/// are skipped).
pub fn read_decisions(path: &Path) -> anyhow::Result<Vec<Recorded>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a recorded decision", path.display(), i + 1))
        })
        .collect()
}

/// Replays every recorded call of the hooks `file` implements and prints
/// the differences; returns how many decisions would change.
pub fn replay(
    engine: &PolicyEngine,
    file: &Path,
    guest_config: String,
    recorded: &[Recorded],
) -> anyhow::Result<usize> {
    let cfg = config_for(file, guest_config)?;
    let mut hooks = BTreeMap::new();
    for name in [HookName::Vxnet, HookName::Ip, HookName::Routes] {
        match AnyHook::load(engine, name, cfg.clone()) {
            Ok(h) => {
                hooks.insert(name, h);
            }
            Err(LoadError::WrongHook { .. }) => {}
            Err(e) => {
                return Err(e).context(format!("loading {} as the {name} hook", file.display()));
            }
        }
    }
    if hooks.is_empty() {
        bail!("{} implements none of the hooks", file.display());
    }
    let (mut same, mut changed, mut skipped) = (0, 0, 0);
    for r in recorded {
        let Some(hook) = hooks.get(&r.hook) else {
            skipped += 1;
            continue;
        };
        let before = match (&r.answer, &r.error) {
            (Some(a), _) => show_answer(r.hook, a),
            (None, Some(e)) => format!("failed: {e}"),
            (None, None) => "nothing".to_string(),
        };
        let now = match hook.decide(&r.facts, r.network_config.as_deref())? {
            Ok(d) if Some(&d.answer) == r.answer.as_ref() => {
                same += 1;
                continue;
            }
            Ok(d) => show_answer(r.hook, &d.answer),
            Err(e) if r.answer.is_none() && e.is_refusal() => {
                // Refused then and now: the same decision, whatever the words.
                same += 1;
                continue;
            }
            Err(e) => format!("failed: {}", hostnic_policy::error_chain(&e)),
        };
        changed += 1;
        println!(
            "{} {} {} {} ({}):\n    recorded  {before}\n    candidate {now}",
            clock(r.at_ms),
            r.facts.pod_name(),
            r.ifname,
            r.hook,
            short(&r.container_id),
        );
    }
    let digest = cfg.sha256.unwrap_or_default();
    println!(
        "replayed {} decisions on {} (sha256 {}): {same} the same, {changed} different{}",
        same + changed,
        file.display(),
        &digest[..12.min(digest.len())],
        if skipped > 0 {
            format!(", {skipped} of hooks it does not implement skipped")
        } else {
            String::new()
        }
    );
    Ok(changed)
}

/// HH:MM:SS UTC of a Unix time in milliseconds.
fn clock(at_ms: u64) -> String {
    let s = (at_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
