//! What the documents cite exists: every repository path they name in a code span (like
//! `src/worker/acks.rs` or `tests/store/`), and every test the guarantees table of
//! `docs/architecture.md` says proves a guarantee.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use crate::{code_spans, documents, files, prose_lines, root};

/// The top-level directories of the repository: a word of a code span that starts with one
/// of them is a path.
const TOP_LEVEL: [&str; 12] = [
    "src/",
    "tests/",
    "benches/",
    "entity/",
    "migration/",
    "examples/",
    "config/",
    "scripts/",
    ".ci/",
    "fuzz/",
    "docs/",
    "deploy/",
];

/// The heading of the table whose "proven by" column names tests.
const GUARANTEES: &str = "## Guarantees: where enforced, where tested";

/// `word` with its brace groups expanded: `a/{b,c}.rs` is `a/b.rs` and `a/c.rs`.
fn expand_braces(word: &str) -> Vec<String> {
    let group = word
        .find('{')
        .and_then(|open| Some((open, open + word[open..].find('}')?)));
    let Some((open, close)) = group else {
        return vec![word.to_owned()];
    };
    word[open + 1..close]
        .split(',')
        .flat_map(|alt| expand_braces(&format!("{}{alt}{}", &word[..open], &word[close + 1..])))
        .collect()
}

/// The repository paths `text` names in its code spans (outside fenced blocks), with
/// their line numbers. Globs (`*`) and `<placeholders>` name no single path.
fn repository_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in prose_lines(text) {
        for span in code_spans(line) {
            let paths = span
                .split_whitespace()
                .filter(|w| TOP_LEVEL.iter().any(|dir| w.starts_with(dir)))
                .filter(|w| !w.contains(['*', '<', '>']))
                .flat_map(expand_braces);
            out.extend(paths.map(|p| (number, p)));
        }
    }
    out
}

/// Every path the document `doc` (relative to `root`) names that does not exist, as
/// `doc:line: path: problem`; a path ending in `/` must be a directory.
fn missing_paths(root: &Path, doc: &Path) -> Vec<String> {
    let text = fs::read_to_string(root.join(doc)).unwrap_or_default();
    let mut problems = Vec::new();
    for (number, path) in repository_paths(&text) {
        let on_disk = root.join(&path);
        let (found, problem) = if path.ends_with('/') {
            (on_disk.is_dir(), "no such directory")
        } else {
            (on_disk.exists(), "no such file")
        };
        if !found {
            problems.push(format!("{}:{number}: {path}: {problem}", doc.display()));
        }
    }
    problems
}

/// Like a test function's name: snake case with at least three underscores.
fn is_test_name(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_lowercase())
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && word.matches('_').count() >= 3
}

/// The test names in the "proven by" column of the guarantees table of `text`, with their
/// line numbers; none when there is no such table.
fn cited_tests(text: &str) -> Vec<(usize, String)> {
    let lines = prose_lines(text);
    let rows = lines
        .iter()
        .skip_while(|(_, l)| l.trim() != GUARANTEES)
        .skip_while(|(_, l)| !l.starts_with('|'))
        .take_while(|(_, l)| l.starts_with('|'));
    let split = |row: &str| -> Vec<String> {
        let row = row.trim().trim_start_matches('|').trim_end_matches('|');
        row.split('|').map(|c| c.trim().to_owned()).collect()
    };
    let mut column = None;
    let mut out = Vec::new();
    for (number, row) in rows {
        let cells = split(row);
        let Some(column) = column else {
            column = cells.iter().position(|c| c == "proven by");
            continue;
        };
        let cited = cells.get(column).map(|c| code_spans(c)).unwrap_or_default();
        out.extend(
            cited
                .into_iter()
                .filter(|w| is_test_name(w))
                .map(|w| (*number, w)),
        );
    }
    out
}

/// The names of the functions defined in the Rust files under `src/` and `tests/`.
fn defined_functions(root: &Path) -> HashSet<String> {
    let sources = ["src", "tests"]
        .iter()
        .flat_map(|dir| files(&root.join(dir)))
        .filter(|f| f.extension().is_some_and(|e| e == "rs"));
    let mut names = HashSet::new();
    for file in sources {
        let text = fs::read_to_string(&file).unwrap_or_default();
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        names.extend(
            words
                .windows(2)
                .filter(|w| w[0] == "fn")
                .map(|w| w[1].to_owned()),
        );
    }
    names
}

/// Every test the guarantees table of `doc` cites that no `fn` under `src/` or `tests/`
/// defines, as `doc:line: name: problem`.
fn undefined_tests(root: &Path, doc: &Path) -> Vec<String> {
    let text = fs::read_to_string(root.join(doc)).unwrap_or_default();
    let defined = defined_functions(root);
    cited_tests(&text)
        .into_iter()
        .filter(|(_, name)| !defined.contains(name))
        .map(|(number, name)| {
            format!(
                "{}:{number}: {name}: no `fn {name}` under src/ or tests/",
                doc.display()
            )
        })
        .collect()
}

#[test]
fn every_repository_path_the_documents_name_exists() {
    let root = root();
    let mut named = 0;
    let mut problems = Vec::new();
    for doc in documents(&root) {
        let rel = doc.strip_prefix(&root).expect("under the root");
        named += repository_paths(&fs::read_to_string(&doc).expect("readable")).len();
        problems.extend(missing_paths(&root, rel));
    }
    assert!(
        named > 100,
        "found only {named} paths: is the parser blind?"
    );
    assert!(
        problems.is_empty(),
        "paths that do not exist:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_test_the_guarantees_table_cites_is_defined() {
    let root = root();
    let doc = Path::new("docs/architecture.md");
    let text = fs::read_to_string(root.join(doc)).expect("readable");
    let cited = cited_tests(&text);
    assert!(
        cited.len() > 30,
        "found only {} tests under `{GUARANTEES}`: is the parser blind?",
        cited.len()
    );
    let problems = undefined_tests(&root, doc);
    assert!(
        problems.is_empty(),
        "cited tests that are not defined:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checkers_report_missing_paths_and_tests_that_are_not_defined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let write = |file: &str, text: &str| {
        let path: PathBuf = root.join(file);
        fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    };
    write("src/a.rs", "fn a_helper_that_is_not_a_test() {}\n");
    write("src/b/mod.rs", "");
    write("benches/run", "");
    write(
        "tests/t/main.rs",
        "#[test]\nfn a_test_that_is_defined() {}\n",
    );
    write(
        "docs/architecture.md",
        "# A\n\n\
         `src/a.rs` `src/{a,b/mod}.rs` `src/b/` `benches/run [seconds]` `tests/t/main.rs`\n\
         `src/<kind>.rs` `tests/*.rs` `cargo run` `config check` `rate_limit_per_session`\n\
         ```\n`src/in_a_fence.rs`\n```\n\
         `src/{a,c}.rs` `src/a.rs/` `docs/gone.md §2` `fuzz/corpus/` `a/src/x.rs`\n\n\
         ## Guarantees: where enforced, where tested\n\n\
         | guarantee | enforced in | proven by |\n\
         |---|---|---|\n\
         | 6.1 | `src/a.rs` (`a_helper_that_is_not_a_test`) | `a_test_that_is_defined` (both, `tests/t/main.rs`); `a_test_that_is_not_defined` |\n\
         | 6.2 | `a_fn_only_enforcing_things` | `a_test_that_is_defined`; `short_name`; `Not_A_Test_Name` |\n\n\
         Cited after the table: `another_name_that_is_not_checked`.\n",
    );
    let doc = Path::new("docs/architecture.md");
    assert_eq!(
        missing_paths(root, doc),
        [
            "docs/architecture.md:8: src/c.rs: no such file",
            "docs/architecture.md:8: src/a.rs/: no such directory",
            "docs/architecture.md:8: docs/gone.md: no such file",
            "docs/architecture.md:8: fuzz/corpus/: no such directory",
        ]
    );
    let text = fs::read_to_string(root.join(doc)).expect("readable");
    let cited: Vec<_> = cited_tests(&text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(
        cited,
        [
            "a_test_that_is_defined",
            "a_test_that_is_not_defined",
            "a_test_that_is_defined"
        ]
    );
    assert_eq!(
        undefined_tests(root, doc),
        [
            "docs/architecture.md:14: a_test_that_is_not_defined: no `fn a_test_that_is_not_defined` under src/ or tests/"
        ]
    );
}
