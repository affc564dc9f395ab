//! No crate's modules import each other in a circle: a reader can follow
//! one concern down without being sent back where they came from. The
//! agent's `tests/layout.rs` started this; this is the same check for the
//! workspace's other crates, made to see every way a module names another.
//!
//! It reads each crate's sources as tokens (comments, strings and
//! `#[cfg(test)]` items left out) and takes every path that starts with
//! `crate::` or `super::`, braced groups (`use crate::{a, b::C}`) included.
//! A module and everything under it count as one (`cni/args.rs` is `cni`).
//! A name taken from the crate root is followed to the module it comes
//! from (`crate::Client` is `client` when `lib.rs` has `pub use
//! client::Client`); an item the root defines itself is the node
//! "(crate root)", which depends on what the root's own code names (its
//! `pub use` re-exports are a facade, not a dependency).
//!
//! It lives in the policy crate because that one is cheap to test; it
//! reads the other crates' sources from the workspace.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// The crates checked, by directory from the workspace root.
const CRATES: &[&str] = &[
    "host/agent",
    "host/policy",
    "host/iaas",
    "host/proto",
    "host/netlink",
    "host/cni",
];

const ROOT: &str = "(crate root)";

#[test]
fn no_crate_has_modules_that_import_in_a_circle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut circles = Vec::new();
    for krate in CRATES {
        let src = workspace.join(krate).join("src");
        let mut files = Vec::new();
        read_sources(&src, &src, &mut files);
        let graph = Graph::of(&files).unwrap_or_else(|e| panic!("{krate}: {e}"));
        assert!(
            !graph.edges.is_empty(),
            "{krate}: found no imports at all in {}; is the check reading the right files?",
            src.display()
        );
        circles.extend(graph.circles().into_iter().map(|c| format!("{krate}: {c}")));
    }
    assert!(
        circles.is_empty(),
        "modules import each other in a circle; move what both need to the module that \
         owns it, or to a small module of its own:\n{}",
        circles.join("\n")
    );
}

/// The check itself, on a made-up crate: it sees a circle through a braced
/// group and a root re-export, follows `super::` out of a directory module,
/// and ignores comments, strings and tests.
#[test]
fn the_check_sees_circles_however_they_are_written() {
    let files = [
        (
            "lib.rs",
            "mod a;\nmod b;\npub mod c;\nmod d;\npub use b::Thing;\n",
        ),
        (
            "a.rs",
            "use crate::{c, Thing};\n// crate::d\npub struct X;\nfn f() { c::g(); }\n",
        ),
        ("b.rs", "pub struct Thing(crate::a::X);\n"),
        (
            "c.rs",
            "pub fn g() { let _ = \"crate::a\"; }\n\
             #[cfg(test)]\nmod tests {\n    use crate::a::X;\n}\n",
        ),
        ("d/mod.rs", "mod e;\npub struct F;\n"),
        ("d/e.rs", "use super::F;\nuse super::super::c::g;\n"),
    ];
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    let graph = Graph::of(&files).unwrap();
    let edges: Vec<String> = graph
        .edges
        .iter()
        .flat_map(|(from, to)| to.keys().map(move |t| format!("{from}->{t}")))
        .collect();
    assert_eq!(edges, ["a->b", "a->c", "b->a", "d->c"]);
    let circles = graph.circles();
    assert_eq!(circles.len(), 1, "{circles:?}");
    assert!(circles[0].starts_with("a -> b -> a"), "{circles:?}");
}

/// Every `.rs` file under `src`, as (path relative to `src`, text); the
/// binary's `main.rs` and `src/bin` are other crates.
fn read_sources(src: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() && rel != "bin" {
            read_sources(src, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && rel != "main.rs" {
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// Which top-level module (or the root) names which, with where it first
/// does.
struct Graph {
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

impl Graph {
    fn of(files: &[(String, String)]) -> Result<Graph, String> {
        let (_, root_text) = files
            .iter()
            .find(|(p, _)| p == "lib.rs")
            .ok_or("no src/lib.rs")?;
        let root = without_tests(tokens(root_text));
        let names = RootNames::of(&root);
        let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (path, text) in files {
            let module = module_path(path);
            let from = module.first().cloned().unwrap_or_else(|| ROOT.to_string());
            let mut toks = without_tests(tokens(text));
            if module.is_empty() {
                // The root's re-exports are a facade; its own code counts.
                toks = without_reexports(toks);
            }
            for (seg, base, line) in references(&toks, &module, &names.modules) {
                let to = match base.first() {
                    Some(top) => top.clone(),
                    None => names
                        .resolve(&seg)
                        .ok_or_else(|| format!("{path}:{line}: which module is `{seg}`?"))?,
                };
                if to != from {
                    edges
                        .entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_insert_with(|| format!("src/{path}:{line}"));
                }
            }
        }
        Ok(Graph { edges })
    }

    /// One shortest circle through each module that is on one, each
    /// named once, with the line of every step.
    fn circles(&self) -> Vec<String> {
        let mut found = BTreeSet::new();
        for start in self.edges.keys() {
            let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
            let mut queue = VecDeque::from([start.as_str()]);
            'search: while let Some(at) = queue.pop_front() {
                for next in self.edges.get(at).into_iter().flat_map(|m| m.keys()) {
                    if next == start {
                        let mut circle = vec![at];
                        while let Some(&prev) = came_from.get(circle.last().unwrap()) {
                            circle.push(prev);
                        }
                        circle.reverse();
                        // Name each circle once, from its smallest module.
                        let min = (0..circle.len()).min_by_key(|&i| circle[i]).unwrap();
                        circle.rotate_left(min);
                        found.insert(circle.iter().map(|s| s.to_string()).collect::<Vec<_>>());
                        break 'search;
                    }
                    if next != start && !came_from.contains_key(next.as_str()) {
                        came_from.insert(next, at);
                        queue.push_back(next);
                    }
                }
            }
        }
        found
            .into_iter()
            .map(|circle| {
                let steps: Vec<String> = circle
                    .iter()
                    .zip(circle.iter().cycle().skip(1))
                    .map(|(a, b)| format!("{} names {b}", self.edges[a][b]))
                    .collect();
                let mut names = circle.clone();
                names.push(circle[0].clone());
                format!("{} ({})", names.join(" -> "), steps.join("; "))
            })
            .collect()
    }
}

/// `cni/args.rs` is `["cni", "args"]`, `cni/mod.rs` is `["cni"]`, `lib.rs`
/// is `[]`.
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if parts == ["lib"] || parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// What the crate root's names are: its modules, what it re-exports (and
/// from which module), what it defines itself.
struct RootNames {
    modules: BTreeSet<String>,
    /// Name -> the module it comes from, or `ROOT`.
    items: BTreeMap<String, String>,
}

impl RootNames {
    fn of(root: &[Tok]) -> RootNames {
        let mut modules = BTreeSet::new();
        let mut items = BTreeMap::new();
        let mut uses = Vec::new();
        let mut depth = 0;
        for (i, t) in root.iter().enumerate() {
            match t.text.as_str() {
                "{" => depth += 1,
                "}" => depth -= 1,
                _ if depth > 0 => {}
                "mod" => {
                    let name = root[i + 1].text.clone();
                    if root[i + 2].text == ";" {
                        modules.insert(name);
                    } else {
                        items.insert(name, ROOT.to_string());
                    }
                }
                "fn" | "struct" | "enum" | "union" | "trait" | "type" | "const" | "static" => {
                    let name = root[i + 1..]
                        .iter()
                        .find(|t| !matches!(t.text.as_str(), "mut" | "fn"))
                        .map_or_else(String::new, |t| t.text.clone());
                    items.insert(name, ROOT.to_string());
                }
                "macro_rules" => {
                    items.insert(root[i + 2].text.clone(), ROOT.to_string());
                }
                "use" => uses.push(i + 1),
                _ => {}
            }
        }
        for start in uses {
            let mut leaves = Vec::new();
            use_tree(root, start, &mut Vec::new(), &mut leaves);
            for (path, name) in leaves {
                let first = path
                    .iter()
                    .find(|s| !matches!(s.as_str(), "crate" | "self" | "::"));
                if let Some(m) = first.filter(|m| modules.contains(*m)) {
                    items.insert(name, m.clone());
                }
            }
        }
        RootNames { modules, items }
    }

    fn resolve(&self, name: &str) -> Option<String> {
        if self.modules.contains(name) {
            return Some(name.to_string());
        }
        self.items.get(name).cloned()
    }
}

/// The leaves of the `use` tree starting at `i`: each one's full path and
/// the name it binds. Returns the index after the tree.
fn use_tree(
    toks: &[Tok],
    mut i: usize,
    prefix: &mut Vec<String>,
    leaves: &mut Vec<(Vec<String>, String)>,
) -> usize {
    let depth = prefix.len();
    loop {
        match toks[i].text.as_str() {
            "::" => i += 1,
            "{" => {
                i += 1;
                while toks[i].text != "}" {
                    i = use_tree(toks, i, prefix, leaves);
                    if toks[i].text == "," {
                        i += 1;
                    }
                }
                i += 1;
                break;
            }
            "*" => {
                i += 1;
                break;
            }
            seg => {
                prefix.push(seg.to_string());
                i += 1;
                if toks[i].text == "::" {
                    continue;
                }
                let mut name = seg.to_string();
                if name == "self" {
                    name = prefix[prefix.len().saturating_sub(2)].clone();
                }
                if toks[i].text == "as" {
                    name = toks[i + 1].text.clone();
                    i += 2;
                }
                leaves.push((prefix.clone(), name));
                break;
            }
        }
    }
    prefix.truncate(depth);
    i
}

/// Every path out of the current module in `toks` (a file of module
/// `module`): the first segment after `crate::`, `super::` (or, in the
/// root, a module's name), the module path it is relative to, and its
/// line.
fn references(
    toks: &[Tok],
    module: &[String],
    root_modules: &BTreeSet<String>,
) -> Vec<(String, Vec<String>, usize)> {
    let inline = inline_modules(toks);
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        let after_path = i > 0 && toks[i - 1].text == "::";
        if after_path || toks.get(i + 1).is_none_or(|n| n.text != "::") {
            continue;
        }
        let (base, rest) = match t.text.as_str() {
            "crate" => (Vec::new(), i + 2),
            "super" => {
                let mut base: Vec<String> = module.to_vec();
                base.extend(
                    inline
                        .iter()
                        .filter(|(open, close, _)| *open < i && i < *close)
                        .map(|(_, _, name)| name.clone()),
                );
                let mut j = i;
                while toks[j].text == "super" && toks[j + 1].text == "::" {
                    base.pop();
                    j += 2;
                }
                (base, j)
            }
            name if module.is_empty() && root_modules.contains(name) => (Vec::new(), i),
            _ => continue,
        };
        let mut first = Vec::new();
        if toks[rest].text == "{" {
            let mut depth = 0;
            for (k, t) in toks.iter().enumerate().skip(rest) {
                match t.text.as_str() {
                    "{" => depth += 1,
                    "}" if depth == 1 => break,
                    "}" => depth -= 1,
                    _ if depth == 1 && matches!(toks[k - 1].text.as_str(), "{" | ",") => {
                        first.push(t.text.clone())
                    }
                    _ => {}
                }
            }
        } else {
            first.push(toks[rest].text.clone());
        }
        for seg in first {
            if seg == "*" {
                continue;
            }
            if seg == "self" {
                // `super::{self, ..}`: the base module itself.
                if let Some(top) = base.first() {
                    out.push((top.clone(), base.clone(), t.line));
                }
                continue;
            }
            out.push((seg, base.clone(), t.line));
        }
    }
    out
}

/// The inline modules (`mod tests { .. }`) in `toks`: the indexes of their
/// braces, and their names.
fn inline_modules(toks: &[Tok]) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    for i in 0..toks.len().saturating_sub(2) {
        if toks[i].text == "mod" && toks[i + 2].text == "{" {
            let close = matching(toks, i + 2);
            out.push((i + 2, close, toks[i + 1].text.clone()));
        }
    }
    out
}

/// The index of the bracket that closes the one at `open`.
fn matching(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match t.text.as_str() {
            "{" | "(" | "[" => depth += 1,
            "}" | ")" | "]" => {
                depth -= 1;
                if depth == 0 {
                    return k;
                }
            }
            _ => {}
        }
    }
    toks.len() - 1
}

/// `toks` without the items under `#[cfg(test)]`.
fn without_tests(toks: Vec<Tok>) -> Vec<Tok> {
    let is_cfg_test = |i: usize| {
        let want = ["#", "[", "cfg", "(", "test", ")", "]"];
        toks.len() >= i + want.len() && want.iter().zip(&toks[i..]).all(|(w, t)| t.text == *w)
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if !is_cfg_test(i) {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        // Skip the attribute, any others after it, then the item: up to
        // its `;` or through its body.
        let mut j = i;
        while toks[j].text == "#" {
            j = matching(toks.as_slice(), j + 1) + 1;
        }
        while !matches!(toks[j].text.as_str(), ";" | "{") {
            j = if toks[j].text == "(" || toks[j].text == "[" {
                matching(&toks, j) + 1
            } else {
                j + 1
            };
        }
        i = if toks[j].text == "{" {
            matching(&toks, j) + 1
        } else {
            j + 1
        };
    }
    out
}

/// `toks` (the root's) without its `pub use` statements, which re-export.
fn without_reexports(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let mut j = i;
        if toks[j].text == "pub" {
            j += 1;
            if toks[j].text == "(" {
                j = matching(&toks, j) + 1;
            }
            if toks[j].text == "use" {
                while toks[j].text != ";" {
                    j += 1;
                }
                i = j + 1;
                continue;
            }
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

#[derive(Clone, Debug)]
struct Tok {
    text: String,
    line: usize,
}

/// Rust source as identifiers, `::` and single punctuation characters,
/// without comments, string, character and byte literals (so neither a doc
/// link nor a message can look like an import).
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    // Skips to after the literal whose opening quote is at `i`; `hashes`
    // for a raw string.
    let string_end = |mut i: usize, raw: Option<usize>, line: &mut usize| -> usize {
        i += 1;
        while i < c.len() {
            match (c[i], raw) {
                ('\n', _) => *line += 1,
                ('\\', None) => {
                    if at(i + 1) == '\n' {
                        *line += 1;
                    }
                    i += 1;
                }
                ('"', None) => return i + 1,
                ('"', Some(n)) if (1..=n).all(|k| at(i + k) == '#') => return i + 1 + n,
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = string_end(i, None, &mut line);
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                // Past the quote, the backslash and the escaped character.
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime or a label.
                out.push(Tok {
                    text: "'".into(),
                    line,
                });
                i += 1;
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let prefix = matches!(word.as_str(), "r" | "b" | "br" | "c" | "cr");
            if prefix && (at(i) == '"' || (word.ends_with('r') && at(i) == '#')) {
                let mut hashes = 0;
                while at(i + hashes) == '#' {
                    hashes += 1;
                }
                if at(i + hashes) == '"' {
                    let raw = word.ends_with('r').then_some(hashes);
                    i = string_end(i + hashes, raw, &mut line);
                    continue;
                }
                if word == "r" && hashes == 1 {
                    // A raw identifier (`r#type`): the identifier follows.
                    i += 1;
                    continue;
                }
            }
            if word == "b" && at(i) == '\'' {
                // A byte: the quote starts a character literal.
                continue;
            }
            out.push(Tok { text: word, line });
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Tok {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Tok {
                text: ch.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}
