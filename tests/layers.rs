//! The code's layers, as docs/ARCHITECTURE.md lists them, checked against the code: every
//! module of `src/` stands on exactly one layer, and names (`crate::MODULE`) only modules on
//! layers below its own. So there is no import cycle, and the document cannot drift from the
//! code. Test modules (`#[cfg(test)] mod tests`, `src/test_support`) are left out: they may
//! reach anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The layers, top first: the lines of the ```layers block in docs/ARCHITECTURE.md.
fn documented_layers() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/ARCHITECTURE.md")).unwrap();
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/ARCHITECTURE.md has a ```layers block");
    block
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.is_empty())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (None: the crate roots).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(Path::new(ROOT).join("src")).unwrap();
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(m) => Some(m.to_string()),
        None => Some(first),
    }
}

/// The modules a file's code names as `crate::X`, leaving out comments and its test module.
fn uses(text: &str) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        for (at, _) in line.match_indices("crate::") {
            let name: String = line[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_module_names_only_modules_on_lower_layers() {
    let layers = documented_layers();
    let mut layer_of: BTreeMap<String, usize> = BTreeMap::new();
    for (i, layer) in layers.iter().enumerate() {
        for m in layer {
            assert!(
                layer_of.insert(m.clone(), i).is_none(),
                "{m} stands on two layers"
            );
        }
    }
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        if module == "test_support" {
            continue;
        }
        seen.insert(module.clone());
        let Some(&own) = layer_of.get(&module) else {
            problems.push(format!("{module} is on no layer of docs/ARCHITECTURE.md"));
            continue;
        };
        for used in uses(&std::fs::read_to_string(file).unwrap()) {
            if used == module || used == "test_support" {
                continue;
            }
            match layer_of.get(&used) {
                Some(&below) if below > own => {}
                Some(_) => problems.push(format!(
                    "{} names crate::{used}, which is not on a layer below {module}'s",
                    file.strip_prefix(ROOT).unwrap().display()
                )),
                None => problems.push(format!("crate::{used} is on no layer")),
            }
        }
    }
    for m in layer_of.keys() {
        if !seen.contains(m) {
            problems.push(format!(
                "docs/ARCHITECTURE.md names {m}, which src/ does not have"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The check itself: a use that goes up a layer, or a module the document does not place, is
/// found (so the test above can fail).
#[test]
fn the_check_sees_uses_and_skips_comments_and_tests() {
    let text = "use crate::units::Sectors;\n// crate::fs in a comment\nfn f() { crate::device::x(); }\n\
                #[cfg(test)]\nmod tests { use crate::registry::Registry; }\n";
    let found: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(found, vec!["device".to_string(), "units".to_string()]);
}
