//! The layers of splitter-ctl (docs/architecture.md, "Module map"): each top-level module uses
//! only the layers below it, so no import cycle can form and a newcomer knows where a piece
//! goes. Read from the sources' `crate::` paths, their tests left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Each layer and the layers it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("engine", &["model"]),
    ("kernel", &["model"]),
    ("store", &["model"]),
    ("io", &["engine", "model"]),
    ("view", &["engine", "kernel", "model", "store"]),
    (
        "daemon",
        &["engine", "io", "kernel", "model", "store", "view"],
    ),
    (
        "cli",
        &["daemon", "engine", "io", "kernel", "model", "store", "view"],
    ),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source text names through `crate::`.
fn used(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the names at the group's first level.
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            names.insert(ident(item.trim()));
        } else {
            names.insert(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

#[test]
fn each_layer_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("below src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = fs::read_to_string(file).expect("read");
        uses.entry(top.clone())
            .or_default()
            .extend(used(&text).into_iter().filter(|u| *u != top));
    }
    let layers: BTreeSet<&str> = ALLOWED.iter().map(|(layer, _)| *layer).collect();
    let found: BTreeSet<&str> = uses.keys().map(String::as_str).collect();
    assert_eq!(
        found, layers,
        "the top-level modules are the layers of the map"
    );
    let mut wrong = Vec::new();
    for (layer, allowed) in ALLOWED {
        for name in &uses[*layer] {
            if !allowed.contains(&name.as_str()) {
                wrong.push(format!("{layer} uses {name}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the layers: {wrong:?}"
    );
}

#[test]
fn the_reader_sees_grouped_and_single_paths() {
    let names = used(
        "use crate::{\n    engine::gates::{A, B},\n    model::{config, plan},\n};\nfn f() { crate::store::journal::now_ms(); }\n#[cfg(test)]\nuse crate::cli;",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["engine", "model", "store"]
    );
}
