//! The README and `docs/` stay true: every command they show names a binary,
//! subcommand and flags that exist (checked against each one's `--help`),
//! every relative link points at a file in the repo, and the README stays a
//! five-minute read.

use std::path::{Path, PathBuf};
use std::process::Command;

use orch_tests::process::binary;

const README_MAX_LINES: usize = 200;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("tests/ has a parent"))
        .to_path_buf()
}

/// README.md and every docs/*.md, with their text.
fn documents() -> Vec<(PathBuf, String)> {
    let mut paths = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap_or_else(|e| panic!("docs/: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths.push(repo().join("deploy/README.md"));
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, text)
        })
        .collect()
}

/// The command lines of a document's ```sh blocks: comments dropped,
/// `\\`-continued lines joined.
fn shell_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            in_sh = !in_sh && matches!(lang.trim(), "sh" | "bash" | "shell" | "console");
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = strip_comment(line);
        if let Some(head) = code.trim_end().strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(&code);
        if !pending.trim().is_empty() {
            out.push(pending.trim().to_string());
        }
        pending.clear();
    }
    out
}

/// `line` without a trailing `# comment` (a `#` outside quotes after a space).
fn strip_comment(line: &str) -> String {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return line[..i].to_string(),
            _ => {}
        }
        prev = c;
    }
    line.to_string()
}

/// Splits a command line into simple commands (on `&&`, `||`, `|`, `;`) and
/// those into words, honouring quotes.
fn commands(line: &str) -> Vec<Vec<String>> {
    let mut cmds = vec![Vec::new()];
    let mut word = String::new();
    let (mut single, mut double) = (false, false);
    let mut chars = line.chars().peekable();
    let end_word = |word: &mut String, cmds: &mut Vec<Vec<String>>| {
        if !word.is_empty() {
            if let Some(last) = cmds.last_mut() {
                last.push(std::mem::take(word));
            }
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            c if c.is_whitespace() && !single && !double => end_word(&mut word, &mut cmds),
            '&' | '|' | ';' if !single && !double => {
                end_word(&mut word, &mut cmds);
                if matches!(chars.peek(), Some('&' | '|')) {
                    chars.next();
                }
                cmds.push(Vec::new());
            }
            c => word.push(c),
        }
    }
    end_word(&mut word, &mut cmds);
    cmds.into_iter().filter(|c| !c.is_empty()).collect()
}

/// Our binary a command runs (`orch`, `orch-web`, ...), if it is one of ours.
fn our_binary(word: &str) -> Option<&str> {
    let name = word.rsplit('/').next()?;
    (name == "orch" || name.starts_with("orch-")).then_some(name)
}

fn help(bin: &str, sub: Option<&str>) -> String {
    let mut cmd = Command::new(binary(bin));
    if let Some(sub) = sub {
        cmd.arg(sub);
    }
    let out = cmd
        .arg("--help")
        .env_remove("NATS_URL")
        .output()
        .unwrap_or_else(|e| panic!("{bin} --help: {e}"));
    assert!(
        out.status.success(),
        "{bin} {} --help failed: {}",
        sub.unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_command_the_docs_show_exists_with_the_flags_they_give() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for (path, text) in documents() {
        for line in shell_lines(&text) {
            for words in commands(&line) {
                // Skip leading VAR=value assignments and `sudo`/`exec`.
                let words: Vec<&String> = words
                    .iter()
                    .skip_while(|w| {
                        (w.contains('=') && !w.starts_with('-')) || *w == "sudo" || *w == "exec"
                    })
                    .collect();
                let Some(first) = words.first() else { continue };
                if first.starts_with("deploy/")
                    || first.starts_with("./deploy/")
                    || first.starts_with(".ci/")
                {
                    let script = repo().join(first.trim_start_matches("./"));
                    if !script.is_file() {
                        problems.push(format!(
                            "{}: `{line}` runs {first}, which does not exist",
                            path.display()
                        ));
                    }
                    continue;
                }
                let Some(bin) = our_binary(first) else {
                    continue;
                };
                let sub = if bin == "orch" {
                    words
                        .get(1)
                        .filter(|w| !w.starts_with('-'))
                        .map(|w| w.as_str())
                } else {
                    None
                };
                let usage = help(bin, sub);
                checked += 1;
                for flag in words.iter().filter(|w| w.starts_with("--")) {
                    let name = flag.split('=').next().unwrap_or(flag);
                    // A flag is followed in --help by a space, comma, `=` or the end of a line.
                    let known = usage.match_indices(name).any(|(at, _)| {
                        usage[at + name.len()..]
                            .chars()
                            .next()
                            .is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_'))
                    });
                    if !known {
                        problems.push(format!(
                            "{}: `{line}`: {bin} {} has no {name}",
                            path.display(),
                            sub.unwrap_or("")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "stale commands in the docs:\n{}",
        problems.join("\n")
    );
    assert!(
        checked >= 10,
        "only {checked} commands found: is the extraction broken?"
    );
}

#[test]
fn every_relative_link_points_at_a_file_in_the_repo() {
    let mut dead = Vec::new();
    let mut links = 0;
    for (path, text) in documents() {
        let dir = path
            .parent()
            .unwrap_or_else(|| panic!("{} has a parent", path.display()));
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            if target.is_empty()
                || target.starts_with('#')
                || target.contains("://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            links += 1;
            let file = target.split('#').next().unwrap_or(target);
            if !dir.join(file).exists() {
                dead.push(format!("{}: ({target})", path.display()));
            }
        }
    }
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
    assert!(
        links >= 8,
        "only {links} relative links: the README should map into docs/"
    );
}

#[test]
fn the_readme_is_a_five_minute_read_and_cites_nothing_missing() {
    let text = std::fs::read_to_string(repo().join("README.md"))
        .unwrap_or_else(|e| panic!("README.md: {e}"));
    let lines = text.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines (at most {README_MAX_LINES}); move reference into docs/"
    );
    for (path, text) in documents() {
        assert!(
            !text.contains("model_orchestrator.md"),
            "{} cites a file the repo does not have",
            path.display()
        );
    }
    // The quick start is the two commands CI runs.
    assert!(
        text.contains(
            "deploy/setup.sh && cargo build --release && target/release/orch up --submit"
        )
    );
    assert!(text.contains("deploy/setup.sh && cargo test --workspace"));
}

#[test]
fn the_extraction_sees_what_a_shell_would() {
    let lines = shell_lines(
        "x\n```sh\n# only a comment\nA=1 orch submit \"a # b\" \\\n    --tools x   # why\n```\n```python\norch nope\n```\n",
    );
    assert_eq!(lines, ["A=1 orch submit \"a # b\"      --tools x"]);
    assert_eq!(
        commands("deploy/setup.sh && cargo build --release | tee x; orch up --submit 'a && b'"),
        [
            vec!["deploy/setup.sh".to_string()],
            vec!["cargo".into(), "build".into(), "--release".into()],
            vec!["tee".into(), "x".into()],
            vec![
                "orch".into(),
                "up".into(),
                "--submit".into(),
                "a && b".into()
            ],
        ]
    );
    assert_eq!(our_binary("target/release/orch"), Some("orch"));
    assert_eq!(our_binary("orch-web"), Some("orch-web"));
    assert_eq!(our_binary("cargo"), None);
}
