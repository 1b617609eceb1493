//! The workspace's shape, checked on its sources: no import circles
//! between the modules of a crate (nor between the submodules of one
//! module), and no source file over 500 lines of non-test code.
//!
//! An import is any `crate::a::b` path (a `use`, a qualified call or a doc
//! link) or, inside a submodule, a `super::x` path, in the code before a
//! file's first `#[cfg(test)]`; test modules and `tests.rs` files do not
//! count. Reads the files only: no build of the crates is involved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates' source folders, from the workspace root.
const CRATES: &[&str] = &[
    "proto/src",
    "chat-logic/src",
    "storage/src",
    "broker/src",
    "clients/src",
    "bench/src",
];
const MAX_LINES: usize = 500;

type Module = Vec<String>;
type Graph = BTreeMap<Module, BTreeSet<Module>>;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The module a file defines, as its path from the crate root.
fn module_of(src: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut module: Module = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        module.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        module.pop();
    }
    module
}

/// A file's code before its first test module.
fn non_test_code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or("")
}

/// The paths that follow each occurrence of `prefix` (`crate::`, `super::`).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let is_path_char = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    code.match_indices(prefix)
        .filter(|(at, _)| {
            let before = code[..*at].chars().next_back();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        })
        .map(|(at, _)| {
            let rest = &code[at + prefix.len()..];
            let end = rest.find(|c: char| !is_path_char(c)).unwrap_or(rest.len());
            rest[..end].split("::").filter(|s| !s.is_empty()).collect()
        })
        .collect()
}

/// The import graph between modules `depth` levels below the crate root
/// (1: top-level modules; 2: the submodules of each top-level module).
fn import_graph(src: &Path, depth: usize) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let module = module_of(src, &file);
        if module.len() < depth || module.iter().any(|m| m == "tests") {
            continue;
        }
        let from: Module = module[..depth].to_vec();
        let text = std::fs::read_to_string(&file).unwrap();
        let code = non_test_code(&text);
        let mut targets: Vec<Module> = paths_after(code, "crate::")
            .into_iter()
            .filter(|path| path.len() >= depth)
            .map(|path| path[..depth].iter().map(|s| s.to_string()).collect())
            .collect();
        if depth == 2 && module.len() == 2 {
            for path in paths_after(code, "super::") {
                if let Some(sibling) = path.first() {
                    targets.push(vec![module[0].clone(), sibling.to_string()]);
                }
            }
        }
        for to in targets {
            let same_parent = depth == 1 || to[..depth - 1] == from[..depth - 1];
            if to != from && same_parent {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

/// One cycle of the graph, if it has any (depth-first search).
fn find_cycle(graph: &Graph) -> Option<Vec<Module>> {
    fn visit(
        node: &Module,
        graph: &Graph,
        done: &mut BTreeSet<Module>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = stack.iter().position(|m| m == node) {
            return Some(stack[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

fn describe(cycle: &[Module]) -> String {
    let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
    format!("{} -> {}", names.join(" -> "), names[0])
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let root = workspace_root();
    let mut circles = Vec::new();
    for krate in CRATES {
        for depth in [1, 2] {
            if let Some(cycle) = find_cycle(&import_graph(&root.join(krate), depth)) {
                circles.push(format!("{krate}: {}", describe(&cycle)));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn no_source_file_has_over_500_lines_of_non_test_code() {
    let root = workspace_root();
    let mut long = Vec::new();
    for krate in CRATES {
        let src = root.join(krate);
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for file in files {
            let module = module_of(&src, &file);
            if module.iter().any(|m| m == "tests") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let lines = non_test_code(&text).lines().count();
            if lines > MAX_LINES {
                long.push(format!("{}: {lines} lines", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checks_see_a_circle_and_the_paths_that_make_it() {
    let module = |m: &str| vec![m.to_string()];
    let mut graph = Graph::new();
    graph.entry(module("a")).or_default().insert(module("b"));
    graph.entry(module("b")).or_default().insert(module("c"));
    assert_eq!(find_cycle(&graph), None);
    graph.entry(module("c")).or_default().insert(module("a"));
    let cycle = find_cycle(&graph).expect("a -> b -> c -> a");
    assert_eq!(describe(&cycle), "a -> b -> c -> a");

    let code = "use crate::chat::engine::Engine;\nlet x = self::crate::no; // [`crate::auth`]\n";
    let paths = paths_after(code, "crate::");
    assert_eq!(paths, vec![vec!["chat", "engine", "Engine"], vec!["auth"]]);
    assert_eq!(
        non_test_code("fn a() {}\n#[cfg(test)]\nmod tests {}"),
        "fn a() {}\n"
    );
}
