//! `guests/GUIDE.md`, executed: every `sh` block in order, in one shell,
//! from an empty directory, with every file block ("File `PATH`:") written
//! where it says, until the demo places pods with the new policy. The
//! commands come from the document itself, so the guide cannot rot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hostnic_testbed::{bin, require_root};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// One step of the guide: a shell block, or a file to write.
#[derive(Debug)]
enum Step {
    Shell(String),
    File { path: String, text: String },
}

/// The guide's steps, in document order.
fn steps(guide: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut lines = guide.lines();
    let mut file: Option<String> = None;
    while let Some(line) = lines.next() {
        if let Some(path) = line
            .strip_prefix("File `")
            .and_then(|rest| rest.strip_suffix("`:"))
        {
            file = Some(path.to_string());
            continue;
        }
        let Some(lang) = line.strip_prefix("```") else {
            if !line.trim().is_empty() {
                file = None;
            }
            continue;
        };
        let mut body = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            body += l;
            body.push('\n');
        }
        match (lang, file.take()) {
            ("sh", _) => steps.push(Step::Shell(body)),
            (_, Some(path)) => steps.push(Step::File { path, text: body }),
            _ => {}
        }
    }
    steps
}

/// The steps as one bash script.
fn script(steps: &[Step]) -> String {
    let mut s = String::from("set -euxo pipefail\n");
    for step in steps {
        match step {
            Step::Shell(body) => s += body,
            Step::File { path, text } => {
                assert!(
                    !text.contains("HOSTNIC_GUIDE_EOF"),
                    "the file block for {path} contains the heredoc marker"
                );
                s += &format!(
                    "mkdir -p \"$(dirname '{path}')\"\ncat > '{path}' <<'HOSTNIC_GUIDE_EOF'\n{text}HOSTNIC_GUIDE_EOF\n"
                );
            }
        }
    }
    s
}

#[test]
fn the_guide_parses_into_commands_and_files() {
    let guide = std::fs::read_to_string(repo().join("guests/GUIDE.md")).unwrap();
    let steps = steps(&guide);
    let files: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::File { path, .. } => Some(path.as_str()),
            Step::Shell(_) => None,
        })
        .collect();
    assert_eq!(files, ["src/lib.rs", "facts.json"]);
    let shell: String = steps
        .iter()
        .filter_map(|s| match s {
            Step::Shell(b) => Some(b.as_str()),
            Step::File { .. } => None,
        })
        .collect();
    for command in [
        "hostnic-agent policy new",
        "cargo test",
        "cargo build --release --target wasm32-wasip2",
        "hostnic-agent policy check --sha256",
        "hostnic-agent policy run",
        "hostnic-agent policy bench",
        "scripts/demo --vxnet-guest",
        "hostnic-agent policy replay",
    ] {
        assert!(shell.contains(command), "the guide lost `{command}`");
    }
    // The policy the guide writes is the example crate's, which the
    // guests' own `cargo test` covers; the guide's copy points at the
    // crate's own wit/ directory.
    let guide_lib = steps
        .iter()
        .find_map(|s| match s {
            Step::File { path, text } if path == "src/lib.rs" => Some(text.clone()),
            _ => None,
        })
        .unwrap();
    let example = std::fs::read_to_string(repo().join("guests/example-policy/src/lib.rs")).unwrap();
    assert!(
        guide_lib == example.replace("path: \"../../wit\",", "path: \"wit\","),
        "GUIDE.md's src/lib.rs differs from guests/example-policy/src/lib.rs; keep them one file"
    );
}

#[test]
fn the_guide_runs_from_an_empty_directory_to_placed_pods() {
    if !require_root("the_guide_runs_from_an_empty_directory_to_placed_pods") {
        return;
    }
    let guide = std::fs::read_to_string(repo().join("guests/GUIDE.md")).unwrap();
    let script = script(&steps(&guide));
    let dir = tempfile::tempdir().unwrap();
    // The profile the tests were built in: the guide's demo reuses it.
    let profile = bin("hostnic")
        .parent()
        .and_then(Path::file_name)
        .and_then(|p| p.to_str())
        .unwrap()
        .to_string();
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("HOSTNIC", repo())
        .env("HOSTNIC_PROFILE", &profile)
        // As a newcomer runs it: cargo's default target directories.
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the guide failed after {:?}:\n--- stdout\n{stdout}\n--- stderr (the commands, traced)\n{stderr}",
        started.elapsed()
    );
    eprintln!(
        "guide: from an empty directory to placed pods in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // `policy run`: the pod that asked for vxnet-b gets it first.
    assert!(stdout.contains("\n  vxnet-b, vxnet-a\n"), "{stdout}");
    // The demo: pods placed as their annotation asks.
    let row = |pod: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{pod} ")))
            .unwrap_or_else(|| panic!("no row for {pod}:\n{stdout}"))
            .to_string()
    };
    for (pod, vxnet, order) in [
        ("db-0", "vxnet-pods-b", "vxnet-pods-b, vxnet-pods"),
        ("db-1", "vxnet-pods-b", "vxnet-pods-b, vxnet-pods"),
        ("cache-0", "vxnet-pods", "vxnet-pods, vxnet-pods-b"),
    ] {
        let r = row(pod);
        assert!(r.ends_with(&format!("({vxnet})")), "{r}");
        assert!(r.contains(order), "{r}");
    }
    assert!(
        stdout.contains("[ok] DEL every pod; no NIC leaked"),
        "{stdout}"
    );
    // The replay of the unchanged module on the demo's decisions.
    assert!(
        stdout.contains("the same, 0 different"),
        "the replay:\n{stdout}"
    );
}
