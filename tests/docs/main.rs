//! The documents hold together: every relative link in `README.md` and `docs/**/*.md`
//! resolves to a file or directory of the repository, and every `#anchor` to a heading of
//! its target (GitHub's slugs); nothing points outside the repository; the publishers the
//! README shows are the examples' code, verbatim; the repository paths and the tests the
//! documents cite exist ([`citations`]); `asyncapi.yaml` is valid AsyncAPI 3.0 and names
//! what the code names ([`asyncapi`]).

mod asyncapi;
mod citations;

use std::{
    collections::HashMap,
    fs,
    path::{Component, Path, PathBuf},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir`, at any depth, sorted; none when `dir` cannot be read.
fn files(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).into_iter().flatten().flatten();
    let mut out = Vec::new();
    for path in entries.map(|e| e.path()) {
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `README.md` and every Markdown file under `docs/`, sorted.
fn documents(root: &Path) -> Vec<PathBuf> {
    let markdown = files(&root.join("docs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"));
    std::iter::once(root.join("README.md"))
        .chain(markdown)
        .collect()
}

/// The lines outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// The code span opening with the backticks at `chars[i]`: the length of that run of
/// backticks and where the closing run of the same length starts (`None`: never closed).
fn code_span(chars: &[char], i: usize) -> (usize, Option<usize>) {
    let run = |j: usize| chars[j..].iter().take_while(|c| **c == '`').count();
    let ticks = run(i);
    let close = (i + ticks..chars.len()).find(|&j| run(j) == ticks && chars[j - 1] != '`');
    (ticks, close)
}

/// The contents of the code spans on one line, trimmed.
fn code_spans(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '`' => {
                let (ticks, close) = code_span(&chars, i);
                let Some(j) = close else { break };
                let text: String = chars[i + ticks..j].iter().collect();
                out.push(text.trim().to_owned());
                i = j + ticks;
            }
            _ => i += 1,
        }
    }
    out
}

/// The targets of the inline links and images on one line; code spans are skipped.
fn link_targets(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '`' => {
                let (ticks, close) = code_span(&chars, i);
                i = close.map_or(chars.len(), |j| j + ticks);
            }
            '[' => {
                let mut depth = 0;
                let mut end = None;
                for (j, c) in chars.iter().enumerate().skip(i) {
                    match c {
                        '[' => depth += 1,
                        ']' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                match end {
                    Some(j) if chars.get(j + 1) == Some(&'(') => {
                        let close = chars[j + 2..].iter().position(|c| *c == ')');
                        let Some(len) = close else {
                            i = j + 1;
                            continue;
                        };
                        let inner: String = chars[j + 2..j + 2 + len].iter().collect();
                        // A title after the target (`[a](b "title")`) is not part of it.
                        let target = inner.split_whitespace().next().unwrap_or("");
                        out.push(target.trim_matches(['<', '>']).to_owned());
                        i = j + 2 + len + 1;
                    }
                    // Link text may itself hold a link: look inside it.
                    _ => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// GitHub's anchor for a heading: its text as rendered (code and emphasis markers and
/// link targets dropped), lower-cased, every character that is not a letter, a digit, a
/// space, `-` or `_` removed, spaces turned into `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // `[text](url)` renders as `text`.
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](") else {
            break;
        };
        let Some(close) = rest[open + mid..].find(')') else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..open + mid]);
        rest = &rest[open + mid + close + 1..];
    }
    text.push_str(rest);
    text.chars()
        .filter(|c| !matches!(c, '`' | '*'))
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text's headings; repeated ones get GitHub's `-1`, `-2`…
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let heading = line[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(heading);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// `path` with `.` and `..` resolved lexically; `None` when it climbs above its start.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Every broken link of the document `doc` (a path relative to `root`), as
/// `doc:line: target: problem`.
fn broken_links(root: &Path, doc: &Path) -> Vec<String> {
    let text = fs::read_to_string(root.join(doc)).unwrap_or_default();
    let dir = doc.parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    for (number, line) in prose_lines(&text) {
        for target in link_targets(line) {
            let mut problem = |what: String| {
                problems.push(format!("{}:{number}: {target}: {what}", doc.display()))
            };
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                doc.to_path_buf()
            } else {
                match normalise(&dir.join(path)) {
                    Some(f) => f,
                    None => {
                        problem("points outside the repository".into());
                        continue;
                    }
                }
            };
            let on_disk = root.join(&file);
            if !on_disk.exists() {
                problem(format!("no such file {}", file.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if on_disk.extension().is_none_or(|e| e != "md") {
                problem("an anchor into a file that is not Markdown".into());
                continue;
            }
            let target_text = fs::read_to_string(&on_disk).unwrap_or_default();
            if !anchors(&target_text).iter().any(|a| a == anchor) {
                problem(format!("no heading #{anchor} in {}", file.display()));
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_and_anchor_in_the_documents_resolves() {
    let root = root();
    let docs = documents(&root);
    assert!(docs.len() > 10, "found only {docs:?}");
    let mut problems = Vec::new();
    let mut links = 0;
    for doc in &docs {
        let rel = doc.strip_prefix(&root).expect("under the root");
        let text = fs::read_to_string(doc).expect("readable");
        links += prose_lines(&text)
            .iter()
            .map(|(_, l)| link_targets(l).len())
            .sum::<usize>();
        problems.extend(broken_links(&root, rel));
    }
    assert!(links > 50, "found only {links} links: is the parser blind?");
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_reports_missing_files_missing_anchors_and_links_out_of_the_repository() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir_all(root.join("docs/decisions")).expect("mkdir");
    fs::write(
        root.join("docs/a.md"),
        "# A\n\n## Two words: `code`\n\n## 6.3 No second revoke\n\n## A\n",
    )
    .expect("write");
    fs::write(root.join("docs/decisions/0001-x.md"), "# X\n").expect("write");
    fs::write(
        root.join("README.md"),
        "[ok](docs/a.md) [ok](docs/a.md#two-words-code) [ok](docs/a.md#63-no-second-revoke)\n\
         [ok](docs/a.md#a-1) [ok](docs/decisions/) [ok](#top) [ok](https://example.com/x)\n\
         `[not a link](nowhere.md)`\n\
         ```\n[not a link](nowhere.md)\n```\n\
         # Top\n\
         [missing](docs/b.md) [anchor](docs/a.md#three) [out](../shared/CONTRACT.md)\n\
         [dir anchor](docs/decisions/#x) [absolute](/etc/passwd)\n",
    )
    .expect("write");
    let problems = broken_links(root, Path::new("README.md"));
    let expected = [
        "README.md:8: docs/b.md: no such file docs/b.md",
        "README.md:8: docs/a.md#three: no heading #three in docs/a.md",
        "README.md:8: ../shared/CONTRACT.md: points outside the repository",
        "README.md:9: docs/decisions/#x: an anchor into a file that is not Markdown",
        "README.md:9: /etc/passwd: points outside the repository",
    ];
    assert_eq!(problems, expected);
    let from_docs = broken_links(root, Path::new("docs/decisions/0001-x.md"));
    assert!(from_docs.is_empty());
    fs::write(
        root.join("docs/decisions/0001-x.md"),
        "[up](../a.md#a) [up](../../README.md#top) [gone](../../../x.md)\n",
    )
    .expect("write");
    assert_eq!(
        broken_links(root, Path::new("docs/decisions/0001-x.md")),
        ["docs/decisions/0001-x.md:1: ../../../x.md: points outside the repository"]
    );
}

#[test]
fn anchors_follow_githubs_rules() {
    for (heading, anchor) in [
        ("6.1 Ack after commit", "61-ack-after-commit"),
        ("8. Not implemented yet", "8-not-implemented-yet"),
        (
            "In bulk: `send revoke|rotate --from-file FILE`",
            "in-bulk-send-revokerotate---from-file-file",
        ),
        (
            "Guarantees: where enforced, where tested",
            "guarantees-where-enforced-where-tested",
        ),
        ("Backends: `[backends.<name>]`", "backends-backendsname"),
        ("The **bold** and [a link](x.md)", "the-bold-and-a-link"),
        (
            "rate_limit_per_session — shared",
            "rate_limit_per_session--shared",
        ),
    ] {
        assert_eq!(slug(heading), anchor, "{heading}");
    }
    assert_eq!(
        anchors("# A\n## A\n```\n# not a heading\n```\n#hashtag\n### A ###\n"),
        ["a", "a-1", "a-2"]
    );
}

/// The lines of `file` between the marker lines `{comment} [publish]` and
/// `{comment} [/publish]`.
fn marked_region(file: &Path, comment: &str) -> String {
    let text = fs::read_to_string(file).expect("example exists");
    let (open, close) = (
        format!("{comment} [publish]"),
        format!("{comment} [/publish]"),
    );
    let start = text
        .lines()
        .position(|l| l.trim() == open)
        .expect("opening marker");
    let end = text
        .lines()
        .position(|l| l.trim() == close)
        .expect("closing marker");
    text.lines()
        .skip(start + 1)
        .take(end - start - 1)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The fenced code blocks of `text` in `language`.
fn code_blocks(text: &str, language: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match current.as_mut() {
            None if line.trim() == format!("```{language}") => current = Some(String::new()),
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn the_readme_shows_the_example_publishers_verbatim() {
    let root = root();
    let readme = fs::read_to_string(root.join("README.md")).expect("README");
    for (language, file, comment) in [
        ("rust", "examples/publish_command.rs", "//"),
        ("python", "examples/publish_command.py", "#"),
    ] {
        let region = marked_region(&root.join(file), comment);
        let blocks = code_blocks(&readme, language);
        assert_eq!(
            blocks,
            [region],
            "the README's {language} block must be exactly the lines between the \
             `{comment} [publish]` markers of {file}"
        );
    }
}

#[test]
fn nothing_in_the_repository_points_to_documents_outside_it() {
    let root = root();
    let needles = [
        "../shared",
        "/work/shared",
        "CONTRACT.md",
        "CONTRACT §",
        "PROVIDERS.md",
        "DESIGN-NOTES",
        "STYLE.md",
    ];
    let this_file = root.join("tests/docs/main.rs");
    let mut all = vec![root.join("README.md"), root.join("Cargo.toml")];
    for dir in [
        "docs",
        "src",
        "tests",
        "examples",
        "config",
        "benches",
        "entity/src",
        "migration/src",
        "fuzz/fuzz_targets",
        ".ci",
    ] {
        all.extend(files(&root.join(dir)));
    }
    let mut found = Vec::new();
    for file in all.iter().filter(|f| **f != this_file) {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            if let Some(needle) = needles.iter().find(|n| line.contains(*n)) {
                let rel = file.strip_prefix(&root).unwrap_or(file);
                found.push(format!("{}:{}: {needle}", rel.display(), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "refer to docs/contract.md (and docs/providers.md) instead:\n{}",
        found.join("\n")
    );
}
