//! What a run of the suite came to, read from the JUnit file the e2e
//! framework writes (`<report-dir>/junit_01.xml`, ginkgo's JUnit reporter):
//! one `<testcase>` per spec of the suite, with its `status`; a spec the
//! focus left out is `skipped` with the message "skipped", one that
//! skipped itself at run time (no provider, a missing feature) has
//! "skipped - <its reason>".

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// One spec the run selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    /// passed, failed, skipped, or ginkgo's other failing states
    /// (panicked, timedout, interrupted, aborted).
    pub status: String,
    /// Why it skipped itself, for a skipped spec.
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// The specs the focus selected, in the report's order.
    pub specs: Vec<Spec>,
    pub duration: Duration,
    /// The suite's own output.
    pub log: PathBuf,
    pub junit: PathBuf,
}

impl Outcome {
    fn count(&self, f: impl Fn(&Spec) -> bool) -> usize {
        self.specs.iter().filter(|s| f(s)).count()
    }

    pub fn passed(&self) -> usize {
        self.count(|s| s.status == "passed")
    }

    /// Skipped at run time, with a reason.
    pub fn skipped(&self) -> usize {
        self.count(|s| s.status == "skipped")
    }

    pub fn failed(&self) -> usize {
        self.count(|s| s.status != "passed" && s.status != "skipped")
    }

    /// Ok only if exactly `want` specs ran and every one passed: a spec
    /// that failed or skipped itself, or a focus that stopped matching
    /// some of them, is an error naming what did not pass.
    pub fn expect_all_passed(&self, want: usize) -> anyhow::Result<()> {
        let not_passed: Vec<String> = self
            .specs
            .iter()
            .filter(|s| s.status != "passed")
            .map(|s| format!("  {} {}: {}", s.status, s.name, s.reason))
            .collect();
        anyhow::ensure!(
            not_passed.is_empty() && self.passed() == want,
            "{} of {want} specs passed, {} ran:\n{}",
            self.passed(),
            self.specs.len(),
            not_passed.join("\n")
        );
        Ok(())
    }

    /// One line: `N passed, N failed, N skipped in D`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped in {:.0?}",
            self.passed(),
            self.failed(),
            self.skipped(),
            self.duration
        )
    }
}

/// Reads the report at `path`.
pub fn read(path: &Path) -> anyhow::Result<Outcome> {
    let xml =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Outcome {
        specs: parse(&xml),
        junit: path.to_path_buf(),
        ..Outcome::default()
    })
}

/// The specs of a JUnit document that the run selected. Not an XML parser:
/// ginkgo writes each `<testcase ...>` start tag on one line, with its
/// attributes quoted and escaped, and a `<skipped message="..."/>` inside.
fn parse(xml: &str) -> Vec<Spec> {
    let mut specs = Vec::new();
    for case in xml.split("<testcase ").skip(1) {
        let body = case.split("</testcase>").next().unwrap_or(case);
        // The suite's own nodes ([SynchronizedBeforeSuite],
        // [ReportAfterSuite], ...) are testcases too; specs are "[It] ...".
        let Some(name) =
            attr(body, "name").and_then(|n| n.strip_prefix("[It] ").map(str::to_string))
        else {
            continue;
        };
        let status = attr(body, "status").unwrap_or_default();
        let mut reason = String::new();
        if let Some(skipped) = body.split("<skipped ").nth(1) {
            let message = attr(skipped, "message").unwrap_or_default();
            // Left out by the focus: not part of the run.
            if message == "skipped" {
                continue;
            }
            reason = message
                .strip_prefix("skipped - ")
                .unwrap_or(&message)
                .to_string();
        }
        specs.push(Spec {
            name,
            status,
            reason,
        });
    }
    specs
}

/// The unescaped value of attribute `name` in the start tag at the
/// beginning of `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.split('>').next()?;
    let needle = format!(" {name}=\"");
    let from = format!(" {start}").find(&needle)? + needle.len() - 1;
    let value = &start[from..];
    let value = &value[..value.find('"')?];
    Some(
        value
            .replace("&#34;", "\"")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#xA;", "\n")
            .replace("&#x9;", "\t")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_counts_the_selected_specs_only() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4" disabled="0" errors="0" failures="1" time="10">
  <testsuite name="Kubernetes e2e suite" tests="5" skipped="2" failures="1">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="0.1"></testcase>
    <testcase name="[It] [sig-network] a &#34;b&#34;" classname="Kubernetes e2e suite" status="passed" time="1.5"></testcase>
    <testcase name="[It] [sig-network] c" classname="Kubernetes e2e suite" status="failed" time="2">
      <failure type="failed">boom</failure>
    </testcase>
    <testcase name="[It] [sig-storage] d" classname="Kubernetes e2e suite" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
    <testcase name="[It] [sig-network] e" classname="Kubernetes e2e suite" status="skipped" time="0.1">
      <skipped message="skipped - Only supported for providers [gce gke] (not skeleton)"></skipped>
    </testcase>
  </testsuite>
</testsuites>"#;
        let specs = parse(xml);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "[sig-network] a \"b\"",
                "[sig-network] c",
                "[sig-network] e"
            ]
        );
        let outcome = Outcome {
            specs,
            ..Outcome::default()
        };
        assert_eq!(
            (outcome.passed(), outcome.failed(), outcome.skipped()),
            (1, 1, 1)
        );
        assert_eq!(
            outcome.specs[2].reason,
            "Only supported for providers [gce gke] (not skeleton)"
        );
    }

    fn outcome(statuses: &[&str]) -> Outcome {
        Outcome {
            specs: statuses
                .iter()
                .enumerate()
                .map(|(i, status)| Spec {
                    name: format!("spec {i}"),
                    status: status.to_string(),
                    reason: String::new(),
                })
                .collect(),
            ..Outcome::default()
        }
    }

    #[test]
    fn only_every_wanted_spec_passing_is_a_pass() {
        assert!(outcome(&["passed", "passed"]).expect_all_passed(2).is_ok());
        // A spec that skipped itself is not a pass.
        let e = outcome(&["passed", "skipped"])
            .expect_all_passed(2)
            .unwrap_err();
        assert!(e.to_string().contains("skipped spec 1"), "{e}");
        assert!(outcome(&["passed", "failed"]).expect_all_passed(2).is_err());
        assert!(
            outcome(&["passed", "interrupted"])
                .expect_all_passed(2)
                .is_err()
        );
        // A focus that matched fewer specs than it should.
        assert!(outcome(&["passed"]).expect_all_passed(2).is_err());
        assert!(outcome(&[]).expect_all_passed(2).is_err());
    }
}
