//! The crate's module graph, read from its sources: no two top-level modules import each other,
//! directly or through others, and the leaves import no stage. This is the check behind the rule
//! in ARCHITECTURE.md that data flows one way; it runs with the unit tests, so CI enforces it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Modules that every stage may use and that use no stage, with what each may import.
const LEAVES: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("id", &[]),
    ("verdict", &[]),
    ("network", &[]),
    ("authinfo", &[]),
    ("peer", &["network"]),
    ("procinfo", &["clock"]),
    ("config", &["network", "verdict"]),
    ("state", &["network"]),
];

/// Source text with comments, string and char literals blanked out, so that only code remains.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#')) && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) => {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let end = format!("\"{}", "#".repeat(hashes));
                i += 2 + hashes;
                i += src[i..].find(&end).map_or(src.len() - i, |p| p + end.len());
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('a', '\n', '\u{2028}'), or else a lifetime ('a).
                let close = if b.get(i + 1) == Some(&b'\\') {
                    src[i + 2..].find('\'').map(|p| i + 2 + p)
                } else {
                    src[i + 1..].chars().next().map(|c| i + 1 + c.len_utf8()).filter(|&j| b.get(j) == Some(&b'\''))
                };
                match close {
                    Some(j) => i = j + 1,
                    None => i += 1,
                }
                out.push(' ');
            }
            _ => {
                let c = src[i..].chars().next().unwrap_or(' ');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The top-level modules named by `crate::…` paths and use trees in `code`.
fn imports(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut found = BTreeSet::new();
    for (pos, _) in code.match_indices("crate::") {
        if code[..pos].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `notifier_crate::`, not `crate::`.
        }
        let rest = code[pos + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The first name of each top-level item of the group.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        found.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty() && m != "self");
    found
}

/// Edges between the crate's top-level modules, from every source file under `src`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(fs::read_dir(&path).expect("readable source dir").map(|e| e.expect("dir entry").path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(src).expect("under src");
        let top = rel.iter().next().and_then(|c| c.to_str()).expect("file name").trim_end_matches(".rs").to_string();
        if matches!(top.as_str(), "lib" | "main" | "module_graph") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("readable source");
        let deps: &mut BTreeSet<String> = modules.entry(top.clone()).or_default();
        deps.extend(imports(&code_only(&text)).into_iter().filter(|m| *m != top));
    }
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    for deps in modules.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    modules
}

/// A cycle through `start`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                return Some([path.clone(), vec![start.to_string()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn no_module_imports_back_up_the_chain() {
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for stage in ["capture", "enrich", "policy", "alert", "pipeline", "output", "loader", "source"] {
        assert!(g.contains_key(stage), "module {stage} not found: {g:?}");
    }
    let cycles: Vec<String> = g.keys().filter_map(|m| cycle(&g, m)).map(|c| c.join(" -> ")).collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    for (leaf, allowed) in LEAVES {
        let extra: Vec<&String> = g[*leaf].iter().filter(|d| !allowed.contains(&d.as_str())).collect();
        assert!(extra.is_empty(), "{leaf} may import only {allowed:?}, but imports {extra:?}");
    }
}

#[test]
fn reads_use_trees_and_paths_but_not_comments_or_strings() {
    let src = r#"
        use crate::{alert::{self, Alert}, config, policy::judge::Judged};
        use crate::source::Record;
        // crate::commented
        /* crate::blocked */
        let s = "crate::quoted";
        let c = '"'; let x = crate::clock::unix_now();
        fn f<'a>(x: &'a str) -> crate::event::LoginEvent { todo!() }
        other_crate::nothing();
    "#;
    let found: Vec<String> = imports(&code_only(src)).into_iter().collect();
    assert_eq!(found, ["alert", "clock", "config", "event", "policy", "source"]);
}

#[test]
fn finds_a_cycle() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(cycle(&g, "a"), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(cycle(&g, "d"), None);
}
