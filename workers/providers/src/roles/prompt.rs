//! The prompts each role sends: a system prompt saying what the role does and
//! what its JSON fields mean, and a user message built from the work request
//! (task, context, available tools, phase-1 findings, the plan to verify).
//!
//! Everything taken from a request is cut to a bound, so a huge context or
//! web page cannot blow the model's context window or our memory. Prompts are
//! never logged: they carry user data.

use std::fmt::Write as _;

use orch_shared::Role;
use orch_shared::wire::{Plan, VisionAnalysis, WebFindings, WorkRequest};

/// Longest task text put in a prompt (characters).
pub const MAX_TASK_CHARS: usize = 16_000;
/// Longest context put in a prompt.
pub const MAX_CONTEXT_CHARS: usize = 32_000;
/// Search hits included from the web role.
pub const MAX_HITS: usize = 8;
/// Fetched pages included from the web role.
pub const MAX_PAGES: usize = 3;
/// Longest excerpt of one fetched page.
pub const MAX_PAGE_CHARS: usize = 2_000;
/// Longest previous reply quoted in a repair request.
pub const MAX_REPAIR_QUOTE_CHARS: usize = 4_000;

const VISION_SYSTEM: &str = "You are the vision component of an automation assistant. \
You look at one screenshot and describe it for a planner that cannot see it. \
Reply with a JSON object with these fields:\n\
- description: one paragraph saying what application or page is shown and its state;\n\
- elements: notable UI elements, each with kind (button, link, input, text, image, dialog, ...) and its visible label;\n\
- errors_detected: errors visible on screen (error dialogs, CAPTCHAs, 404 pages, validation messages); empty if none;\n\
- suggested_actions: what a user would do next on this screen, as short imperative sentences.\n\
Report only what is visible; do not guess at what is off screen.";

const REASONER_SYSTEM: &str = "You are the planning component of an automation assistant. \
Given a task, optional context, the tools that are available and findings from other components, \
you produce a plan. Reply with a JSON object with these fields:\n\
- steps: the ordered steps; each has tool, args (a list of {name, value} pairs) and why;\n\
- answer: your answer or summary in prose;\n\
- confidence: a number from 0 to 1, how sure you are that the plan accomplishes the task.\n\
Steps may only use the tools listed under \"Available tools\", spelled exactly as listed. \
Never invent a tool. If no listed tool fits, or no tools are available, return an empty steps list \
and explain in answer. Lower your confidence when information is missing or the screen shows errors.";

const VERIFIER_SYSTEM: &str = "You are the verification component of an automation assistant. \
You review a plan another model produced for a task. Check that the plan accomplishes the task, \
that every step uses only the available tools with sensible arguments, that it agrees with the \
screen analysis and web findings, and that nothing is unsafe or destructive without reason. \
Reply with a JSON object with these fields:\n\
- verdict: \"approved\" if the plan is correct and safe, \"rejected\" if it is wrong, unsafe or uses \
tools that are not available, \"uncertain\" if you cannot tell;\n\
- issues: the problems you found; empty when approved;\n\
- confidence: a number from 0 to 1, how sure you are of your verdict.";

/// The system prompt of `role`.
pub fn system(role: Role) -> &'static str {
    match role {
        Role::Vision => VISION_SYSTEM,
        Role::Reasoner => REASONER_SYSTEM,
        Role::Verifier => VERIFIER_SYSTEM,
        Role::Web => "",
    }
}

/// Cuts `s` to `max` characters, saying so.
pub fn clip(s: &str, max: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{} [truncated]", &s[..i]),
        None => s.to_string(),
    }
}

/// The user message of `role` for `req`.
pub fn user(role: Role, req: &WorkRequest) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Task: {}", clip(&req.task, MAX_TASK_CHARS));
    if let Some(c) = req.context.as_deref().filter(|c| !c.trim().is_empty()) {
        let _ = writeln!(out, "\nContext: {}", clip(c, MAX_CONTEXT_CHARS));
    }
    if role == Role::Vision {
        out.push_str("\nDescribe the attached screenshot with this task in mind.\n");
        return out;
    }
    tools(&mut out, &req.available_tools);
    if let Some(v) = &req.vision {
        vision(&mut out, v);
    }
    if let Some(w) = &req.web {
        web(&mut out, w);
    }
    match role {
        Role::Verifier => {
            match &req.answer {
                Some(plan) => answer(&mut out, plan),
                None => out.push_str("\nPlan to verify: (none was given)\n"),
            }
            out.push_str("\nVerify the plan.\n");
        }
        _ => out.push_str("\nProduce the plan.\n"),
    }
    out
}

fn tools(out: &mut String, tools: &[String]) {
    if tools.is_empty() {
        out.push_str("\nAvailable tools: none (the plan must have no steps).\n");
    } else {
        let list: Vec<String> = tools.iter().map(|t| clip(t, 128)).collect();
        let _ = writeln!(out, "\nAvailable tools: {}", list.join(", "));
    }
}

fn vision(out: &mut String, v: &VisionAnalysis) {
    out.push_str("\nScreen analysis (from the vision component):\n");
    let _ = writeln!(out, "- description: {}", clip(&v.description, 2_000));
    if !v.errors_detected.is_empty() {
        let errors: Vec<String> = v
            .errors_detected
            .iter()
            .take(10)
            .map(|e| clip(e, 300))
            .collect();
        let _ = writeln!(out, "- errors on screen: {}", errors.join("; "));
    }
    if !v.elements.is_empty() {
        let els: Vec<String> = v
            .elements
            .iter()
            .take(30)
            .map(|e| format!("{} \"{}\"", clip(&e.kind, 40), clip(&e.label, 200)))
            .collect();
        let _ = writeln!(out, "- elements: {}", els.join(", "));
    }
    if !v.suggested_actions.is_empty() {
        let acts: Vec<String> = v
            .suggested_actions
            .iter()
            .take(10)
            .map(|a| clip(a, 300))
            .collect();
        let _ = writeln!(out, "- suggested actions: {}", acts.join("; "));
    }
}

fn web(out: &mut String, w: &WebFindings) {
    let _ = writeln!(
        out,
        "\nWeb findings (from the web component, query \"{}\"):",
        clip(&w.query, 500)
    );
    if w.results.is_empty() && w.pages.is_empty() {
        out.push_str("- no results\n");
    }
    for (i, h) in w.results.iter().take(MAX_HITS).enumerate() {
        let _ = writeln!(
            out,
            "{}. {} <{}>: {}",
            i + 1,
            clip(&h.title, 200),
            clip(&h.url, 500),
            clip(&h.snippet, 300)
        );
    }
    for p in w.pages.iter().take(MAX_PAGES) {
        let _ = writeln!(
            out,
            "Page {} ({}):\n{}",
            clip(&p.url, 500),
            clip(&p.title, 200),
            clip(&p.text, MAX_PAGE_CHARS)
        );
    }
}

fn answer(out: &mut String, plan: &Plan) {
    let text = serde_json::to_string_pretty(plan).unwrap_or_else(|_| plan.answer.clone());
    let _ = writeln!(out, "\nPlan to verify:\n{}", clip(&text, 16_000));
}

/// The user message of the one repair attempt: the original message, the
/// invalid reply (cut) and why it was refused.
pub fn repair(original_user: &str, previous: &str, error: &str) -> String {
    format!(
        "{original_user}\n\n---\nYour previous reply could not be used: {error}.\n\
         Your previous reply was:\n{}\n---\n\
         Reply again with only the corrected JSON object, following the schema exactly.",
        clip(previous, MAX_REPAIR_QUOTE_CHARS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_shared::wire::{PlanStep, SearchHit, UiElement};

    fn req(role: Role) -> WorkRequest {
        WorkRequest {
            task_id: "t1".parse().unwrap(),
            role,
            slot: orch_shared::Slot::default_slot(),
            task: "Find Python developers".into(),
            context: Some("talent pipeline".into()),
            available_tools: vec!["playwright_navigate".into(), "search".into()],
            screenshot: None,
            query: None,
            screenshot_ref: None,
            vision: Some(VisionAnalysis {
                description: "a LinkedIn search page".into(),
                elements: vec![UiElement {
                    kind: "button".into(),
                    label: "Search".into(),
                }],
                errors_detected: vec!["CAPTCHA shown".into()],
                suggested_actions: vec![],
            }),
            web: Some(WebFindings {
                query: "python devs".into(),
                results: vec![SearchHit {
                    title: "Hire".into(),
                    url: "https://x.invalid".into(),
                    snippet: "s".into(),
                }],
                pages: vec![],
            }),
            answer: Some(Plan {
                steps: vec![PlanStep {
                    tool: "search".into(),
                    args: Default::default(),
                    why: "find".into(),
                }],
                answer: "search for them".into(),
                confidence: 0.6,
            }),
        }
    }

    #[test]
    fn reasoner_prompt_has_everything_and_the_tool_rule() {
        let u = user(Role::Reasoner, &req(Role::Reasoner));
        for want in [
            "Task: Find Python developers",
            "Context: talent pipeline",
            "Available tools: playwright_navigate, search",
            "a LinkedIn search page",
            "CAPTCHA shown",
            "https://x.invalid",
        ] {
            assert!(u.contains(want), "missing {want:?} in {u}");
        }
        assert!(!u.contains("Plan to verify"));
        assert!(system(Role::Reasoner).contains("may only use the tools listed"));
    }

    #[test]
    fn verifier_prompt_has_the_plan() {
        let u = user(Role::Verifier, &req(Role::Verifier));
        assert!(u.contains("Plan to verify"));
        assert!(u.contains("search for them"));
    }

    #[test]
    fn inputs_are_clipped() {
        let mut r = req(Role::Reasoner);
        r.context = Some("c".repeat(100_000));
        let u = user(Role::Reasoner, &r);
        assert!(u.len() < 40_000);
        assert!(u.contains("[truncated]"));
        let rep = repair("orig", &"x".repeat(10_000), "bad");
        assert!(rep.len() < 5_000 && rep.contains("could not be used: bad"));
    }
}
