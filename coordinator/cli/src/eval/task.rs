//! One labelled task of `orch eval` and the objective checks that decide
//! whether the fleet's answer passed.
//!
//! A task file is JSON Lines; each line is
//! `{"id", "request": <SubmitRequest>, "expect": {<checks>}}`, or, for a task
//! that tests the verifier alone, `"verify_plan": <Plan>` beside the request
//! (the plan is sent to the verifier as if a reasoner had written it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use orch_client::SubmitRequest;
use orch_shared::Role;
use orch_shared::wire::{OrchestratedResult, Plan, Verdict, VerdictKind};
use regex::Regex;
use serde::Deserialize;

/// Longest task file read (a labelled set is kilobytes; this is a typo guard).
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Screenshots a task names are read from disk, at most this large.
const MAX_SCREENSHOT_BYTES: u64 = 8 << 20;

/// What a task expects; every check is optional and all must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Tools the plan's steps must use (each at least once).
    #[serde(default)]
    pub must_use: Vec<String>,
    /// Tools the plan's steps must not use.
    #[serde(default)]
    pub must_not_use: Vec<String>,
    /// The tool of the first step.
    pub first_tool: Option<String>,
    /// At least this many steps.
    pub min_steps: Option<usize>,
    /// At most this many steps.
    pub max_steps: Option<usize>,
    /// Regexes that must each match the answer text.
    #[serde(default)]
    pub answer_matches: Vec<String>,
    /// The verifier's verdict.
    pub verdict: Option<VerdictKind>,
    /// The right outcome is no plan: no available tool can do this, so the
    /// fleet must answer with no steps (or no answer and an error).
    #[serde(default)]
    pub expect_failure: bool,
}

/// One line of a task file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    request: SubmitRequest,
    #[serde(default)]
    expect: Expect,
    /// A PNG or JPEG next to the task file, sent as the request's screenshot.
    screenshot_file: Option<PathBuf>,
    /// Verifier task: this plan is judged instead of a reasoner's.
    verify_plan: Option<Plan>,
    /// Free text for people reading the set.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

/// A task ready to run, its regexes compiled.
#[derive(Debug)]
pub struct EvalTask {
    /// Unique within the file.
    pub id: String,
    /// What is submitted.
    pub request: SubmitRequest,
    /// What must hold.
    pub expect: Expect,
    /// Verifier task: the plan to judge.
    pub verify_plan: Option<Plan>,
    answer_res: Vec<Regex>,
}

/// Reads a task file; every problem names its line.
///
/// # Errors
/// Unreadable file, a line that is not a task, a duplicate id, a bad regex,
/// contradictory checks, a missing screenshot.
pub fn load(path: &Path) -> anyhow::Result<Vec<EvalTask>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "{} is {} bytes; a task file may hold at most {MAX_FILE_BYTES}",
            path.display(),
            meta.len()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut tasks = Vec::new();
    let mut ids = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let task = parse_line(line, base).with_context(at)?;
        if !ids.insert(task.id.clone()) {
            bail!("{}: task id {:?} appears twice", at(), task.id);
        }
        tasks.push(task);
    }
    if tasks.is_empty() {
        bail!("{} holds no tasks", path.display());
    }
    Ok(tasks)
}

fn parse_line(line: &str, base: &Path) -> anyhow::Result<EvalTask> {
    let mut l: Line = serde_json::from_str(line).context("not a task line")?;
    if l.id.trim().is_empty() {
        bail!("task id is empty");
    }
    let e = &l.expect;
    if let (Some(lo), Some(hi)) = (e.min_steps, e.max_steps)
        && lo > hi
    {
        bail!("min_steps {lo} > max_steps {hi}");
    }
    if e.expect_failure && (!e.must_use.is_empty() || e.first_tool.is_some()) {
        bail!("expect_failure contradicts must_use / first_tool");
    }
    if e.verdict.is_some() != l.verify_plan.is_some() {
        bail!("a verdict check needs verify_plan, and verify_plan needs a verdict check");
    }
    let answer_res = e
        .answer_matches
        .iter()
        .map(|r| Regex::new(r).with_context(|| format!("answer_matches {r:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(file) = &l.screenshot_file {
        let file = base.join(file);
        let len = std::fs::metadata(&file)
            .with_context(|| format!("screenshot_file {}", file.display()))?
            .len();
        if len > MAX_SCREENSHOT_BYTES {
            bail!("screenshot_file {} is {len} bytes", file.display());
        }
        l.request.screenshot = Some(
            std::fs::read(&file)
                .with_context(|| format!("screenshot_file {}", file.display()))?
                .into(),
        );
    }
    Ok(EvalTask {
        id: l.id,
        request: l.request,
        expect: l.expect,
        verify_plan: l.verify_plan,
        answer_res,
    })
}

/// What the fleet answered for one task, reduced to what the checks read.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The plan, when the answer parsed as one.
    pub plan: Option<Plan>,
    /// The answer was present but was not a plan.
    pub malformed: bool,
    /// The verifier's verdict, when one was given.
    pub verdict: Option<Verdict>,
    /// The fleet's error, when it gave no answer.
    pub error: Option<String>,
}

impl Observed {
    /// From a coordinator's result.
    pub fn from_result(r: &OrchestratedResult) -> Observed {
        let plan = r
            .primary_answer
            .as_ref()
            .and_then(|a| serde_json::from_value::<Plan>(a.clone()).ok());
        let verdict = r
            .model_results
            .get(&Role::Verifier)
            .filter(|m| m.success)
            .and_then(|m| serde_json::from_value(m.content.clone()).ok());
        let error = plan.is_none().then(|| {
            let failed: Vec<String> = r
                .model_results
                .values()
                .filter_map(|m| m.error.clone())
                .collect();
            if failed.is_empty() {
                "no answer".to_string()
            } else {
                failed.join("; ")
            }
        });
        Observed {
            malformed: r.primary_answer.is_some() && plan.is_none(),
            plan,
            verdict,
            error,
        }
    }
}

/// The outcome of one task's checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Every check held.
    pub pass: bool,
    /// The answer was a plan whose steps use only the request's available tools.
    pub valid: bool,
    /// The checks that failed, in words (empty when `pass`).
    pub failures: Vec<String>,
}

impl EvalTask {
    /// Applies every check to what the fleet answered.
    pub fn judge(&self, seen: &Observed) -> Judgement {
        let mut failures = Vec::new();
        let e = &self.expect;
        if self.verify_plan.is_some() {
            return self.judge_verdict(seen);
        }
        let available: BTreeSet<&str> = self
            .request
            .available_tools
            .iter()
            .map(String::as_str)
            .collect();
        let Some(plan) = &seen.plan else {
            let why = if seen.malformed {
                "the answer is not a plan".to_string()
            } else {
                format!(
                    "no answer: {}",
                    seen.error.as_deref().unwrap_or("no error given")
                )
            };
            // No answer is the right outcome only when a clear error says why.
            let pass = e.expect_failure && seen.error.is_some();
            if !pass {
                failures.push(why);
            }
            return Judgement {
                pass,
                valid: false,
                failures,
            };
        };
        let tools: Vec<&str> = plan.steps.iter().map(|s| s.tool.as_str()).collect();
        let invented: BTreeSet<&str> = tools
            .iter()
            .copied()
            .filter(|t| !available.contains(t))
            .collect();
        let valid = invented.is_empty();
        if !valid {
            failures.push(format!(
                "uses tools that are not available: {}",
                invented.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        if e.expect_failure && !plan.steps.is_empty() {
            failures.push(format!(
                "no available tool fits, but the plan has {} steps ({})",
                plan.steps.len(),
                tools.join(", ")
            ));
        }
        for t in &e.must_use {
            if !tools.contains(&t.as_str()) {
                failures.push(format!("does not use {t}"));
            }
        }
        for t in &e.must_not_use {
            if tools.contains(&t.as_str()) {
                failures.push(format!("uses {t}"));
            }
        }
        if let Some(first) = &e.first_tool
            && tools.first() != Some(&first.as_str())
        {
            failures.push(format!(
                "first step is {}, not {first}",
                tools.first().copied().unwrap_or("(none)")
            ));
        }
        if let Some(min) = e.min_steps
            && tools.len() < min
        {
            failures.push(format!("{} steps, fewer than {min}", tools.len()));
        }
        if let Some(max) = e.max_steps
            && tools.len() > max
        {
            failures.push(format!("{} steps, more than {max}", tools.len()));
        }
        for re in &self.answer_res {
            if !re.is_match(&plan.answer) {
                failures.push(format!("answer does not match /{}/", re.as_str()));
            }
        }
        Judgement {
            pass: failures.is_empty(),
            valid,
            failures,
        }
    }

    fn judge_verdict(&self, seen: &Observed) -> Judgement {
        let want = self.expect.verdict;
        let mut failures = Vec::new();
        match (&seen.verdict, want) {
            (Some(v), Some(want)) if v.verdict == want => {}
            (Some(v), Some(want)) => failures.push(format!(
                "verdict {}, expected {}",
                v.verdict.as_str(),
                want.as_str()
            )),
            (None, _) => failures.push(format!(
                "no verdict: {}",
                seen.error.as_deref().unwrap_or("no error given")
            )),
            (Some(_), None) => {}
        }
        Judgement {
            pass: failures.is_empty(),
            valid: seen.verdict.is_some(),
            failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_shared::wire::PlanStep;

    fn task(line: &str) -> EvalTask {
        parse_line(line, Path::new(".")).unwrap()
    }

    fn plan(tools: &[&str], answer: &str) -> Observed {
        Observed {
            plan: Some(Plan {
                steps: tools
                    .iter()
                    .map(|t| PlanStep {
                        tool: (*t).into(),
                        args: Default::default(),
                        why: String::new(),
                    })
                    .collect(),
                answer: answer.into(),
                confidence: 0.5,
            }),
            ..Observed::default()
        }
    }

    const NAV: &str = r#"{"id":"a","request":{"task":"t","available_tools":["nav","click","type"]},"expect":{"must_use":["nav"],"first_tool":"nav","min_steps":2,"max_steps":3,"answer_matches":["(?i)login"]}}"#;

    #[test]
    fn a_plan_that_meets_every_check_passes() {
        let j = task(NAV).judge(&plan(&["nav", "click"], "Log in, then LOGIN again"));
        assert_eq!(
            j,
            Judgement {
                pass: true,
                valid: true,
                failures: vec![]
            }
        );
    }

    #[test]
    fn each_failed_check_is_named() {
        let j = task(NAV).judge(&plan(&["click", "type", "type", "click"], "done"));
        assert!(!j.pass);
        assert!(j.valid);
        assert_eq!(
            j.failures,
            [
                "does not use nav",
                "first step is click, not nav",
                "4 steps, more than 3",
                "answer does not match /(?i)login/"
            ]
        );
    }

    #[test]
    fn an_invented_tool_never_passes_and_is_not_valid() {
        let t = task(r#"{"id":"a","request":{"task":"t","available_tools":["nav"]}}"#);
        assert!(t.judge(&plan(&["nav"], "")).pass);
        let j = t.judge(&plan(&["nav", "teleport"], ""));
        assert!(!j.pass && !j.valid);
        assert_eq!(j.failures, ["uses tools that are not available: teleport"]);
    }

    #[test]
    fn expected_failure_passes_on_an_empty_plan_or_an_explained_error_only() {
        let t = task(
            r#"{"id":"a","request":{"task":"t","available_tools":["nav"]},"expect":{"expect_failure":true}}"#,
        );
        assert!(t.judge(&plan(&[], "no tool can do this")).pass);
        assert!(!t.judge(&plan(&["nav"], "")).pass);
        let error = Observed {
            error: Some("reasoner: not configured".into()),
            ..Observed::default()
        };
        assert!(t.judge(&error).pass);
        let malformed = Observed {
            malformed: true,
            ..Observed::default()
        };
        assert!(!t.judge(&malformed).pass);
        // Without expect_failure, no answer fails.
        let plain = task(r#"{"id":"a","request":{"task":"t"}}"#);
        assert_eq!(
            plain.judge(&error).failures,
            ["no answer: reasoner: not configured"]
        );
    }

    #[test]
    fn verifier_tasks_check_the_verdict() {
        let t = task(
            r#"{"id":"v","request":{"task":"t","available_tools":["nav"]},"verify_plan":{"steps":[],"answer":"x","confidence":0.9},"expect":{"verdict":"rejected"}}"#,
        );
        let seen = |v| Observed {
            verdict: Some(Verdict {
                verdict: v,
                issues: vec![],
                confidence: 0.8,
            }),
            ..Observed::default()
        };
        assert!(t.judge(&seen(VerdictKind::Rejected)).pass);
        let j = t.judge(&seen(VerdictKind::Approved));
        assert_eq!(j.failures, ["verdict approved, expected rejected"]);
        assert!(!t.judge(&Observed::default()).pass);
    }

    #[test]
    fn bad_lines_are_refused_with_the_reason() {
        let err = |l: &str| format!("{:#}", parse_line(l, Path::new(".")).unwrap_err());
        assert!(err(r#"{"id":"a"}"#).contains("not a task line"));
        assert!(
            err(r#"{"id":"a","request":{"task":"t"},"expect":{"min_steps":3,"max_steps":1}}"#)
                .contains("min_steps 3 > max_steps 1")
        );
        assert!(
            err(r#"{"id":"a","request":{"task":"t"},"expect":{"answer_matches":["("]}}"#)
                .contains("answer_matches")
        );
        assert!(
            err(r#"{"id":"a","request":{"task":"t"},"expect":{"verdict":"approved"}}"#)
                .contains("verify_plan")
        );
        assert!(
            err(r#"{"id":"a","request":{"task":"t"},"expect":{"mustuse":[]}}"#)
                .contains("not a task line")
        );
        assert!(
            err(r#"{"id":"a","request":{"task":"t"},"screenshot_file":"nope.png"}"#)
                .contains("nope.png")
        );
    }

    #[test]
    fn a_file_with_a_duplicate_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let line = r#"{"id":"a","request":{"task":"t"}}"#;
        std::fs::write(&path, format!("{line}\n\n// comment\n{line}\n")).unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(
            err.contains("t.jsonl:4") && err.contains("appears twice"),
            "{err}"
        );
    }

    /// The labelled set in the repo loads, holds at least 60 tasks across its
    /// calibration and held-out parts, and covers every kind of check.
    #[test]
    fn the_labelled_set_is_well_formed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/eval");
        let mut all = Vec::new();
        for part in ["calibration.jsonl", "held-out.jsonl"] {
            let tasks = load(&dir.join(part)).unwrap_or_else(|e| panic!("{part}: {e:#}"));
            assert!(tasks.len() >= 30, "{part}: {} tasks", tasks.len());
            all.extend(tasks);
        }
        assert!(all.len() >= 60);
        let count = |f: &dyn Fn(&EvalTask) -> bool| all.iter().filter(|t| f(t)).count();
        assert!(count(&|t| t.expect.expect_failure) >= 10);
        assert!(count(&|t| t.verify_plan.is_some()) >= 10);
        assert!(count(&|t| t.request.screenshot.is_some()) >= 4);
        assert!(count(&|t| t.request.context.is_some()) >= 8);
        assert!(count(&|t| t.expect.must_use.iter().any(|u| u == "ask_human")) >= 4);
        // A check that names a tool the request does not offer could never pass.
        for t in &all {
            let offered = &t.request.available_tools;
            for tool in t.expect.must_use.iter().chain(&t.expect.first_tool) {
                assert!(offered.contains(tool), "{}: {tool} is not offered", t.id);
            }
        }
    }
}
