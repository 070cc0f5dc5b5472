//! Phase 4: the seed's conflict and confidence rules, as one pure function.
//!
//! Confidence starts from the primary answer and is adjusted in this order:
//!
//! 1. **Base.** The reasoner's own `confidence` (clamped to 0..=1; 0.5 if it is
//!    not a number). If the reasoner was asked for and every slot failed, the
//!    result is `primary_answer: null` with confidence **0** and nothing else
//!    applies. If no reasoner was asked for, the base is a neutral 0.5.
//! 2. **Plan outside the allowed tools.** When the request lists
//!    `available_tools`, every plan step using another tool is a conflict, and
//!    confidence is multiplied by 0.8 (once).
//! 3. **Verification** (when it ran and answered):
//!    - `approved` — two models agree, so half the remaining doubt goes away,
//!      weighted by the verifier's confidence `v`: `c ← c + (1 − c) · 0.5 · v`.
//!    - `uncertain` — `c ← c · 0.9`.
//!    - `rejected` — the seed's rule: confidence drops to **0.3**
//!      (`c ← min(c, 0.3)`) and the rejection with its issues is a conflict.
//! 4. **Vision errors.** If the vision role reports errors on screen, the seed's
//!    rule: confidence × **0.8** and a conflict listing them.
//!
//! The result is clamped to 0..=1 and rounded to 6 decimals.

use orch_shared::wire::{Plan, Verdict, VerdictKind, VisionAnalysis};

/// Confidence used when there is no reasoner answer to start from.
pub const NEUTRAL_CONFIDENCE: f64 = 0.5;
/// Confidence after a rejected verification (the seed's 0.3).
pub const REJECTED_CONFIDENCE: f64 = 0.3;
/// Factor for errors seen on screen (the seed's "reduced by 20%").
pub const VISION_ERROR_FACTOR: f64 = 0.8;
/// Factor for a plan that uses tools it was not given.
pub const ROGUE_TOOL_FACTOR: f64 = 0.8;
/// Factor for an `uncertain` verdict.
pub const UNCERTAIN_FACTOR: f64 = 0.9;
/// Share of the remaining doubt an `approved` verdict (at confidence 1) removes.
pub const AGREEMENT_GAIN: f64 = 0.5;

/// What synthesis looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Whether the reasoner role was part of the task.
    pub reasoner_requested: bool,
    /// The primary answer, if a reasoner produced one.
    pub plan: Option<&'a Plan>,
    /// The verifier's verdict, if verification ran and answered.
    pub verdict: Option<&'a Verdict>,
    /// The vision analysis, if vision ran and answered.
    pub vision: Option<&'a VisionAnalysis>,
    /// The tools the plan was allowed to use.
    pub available_tools: &'a [String],
}

/// What synthesis decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Overall confidence, 0..=1.
    pub confidence: f64,
    /// Conflicts, in the order found.
    pub conflicts: Vec<String>,
}

fn unit(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        NEUTRAL_CONFIDENCE
    }
}

/// Applies the rules above.
pub fn synthesize(inputs: Inputs<'_>) -> Outcome {
    let mut conflicts = Vec::new();
    let mut c = match (inputs.reasoner_requested, inputs.plan) {
        (true, None) => {
            return Outcome {
                confidence: 0.0,
                conflicts,
            };
        }
        (_, Some(plan)) => unit(plan.confidence),
        (false, None) => NEUTRAL_CONFIDENCE,
    };

    if let Some(plan) = inputs.plan
        && !inputs.available_tools.is_empty()
    {
        let mut rogue = false;
        for (i, step) in plan.steps.iter().enumerate() {
            if !inputs.available_tools.iter().any(|t| t == &step.tool) {
                rogue = true;
                conflicts.push(format!(
                    "plan step {} uses tool `{}`, which is not in available_tools",
                    i + 1,
                    step.tool
                ));
            }
        }
        if rogue {
            c *= ROGUE_TOOL_FACTOR;
        }
    }

    if let Some(v) = inputs.verdict {
        match v.verdict {
            VerdictKind::Approved => c += (1.0 - c) * AGREEMENT_GAIN * unit(v.confidence),
            VerdictKind::Uncertain => c *= UNCERTAIN_FACTOR,
            VerdictKind::Rejected => {
                c = c.min(REJECTED_CONFIDENCE);
                let why = if v.issues.is_empty() {
                    "no reason given".to_string()
                } else {
                    v.issues.join("; ")
                };
                conflicts.push(format!("verification rejected the primary answer: {why}"));
            }
        }
    }

    if let Some(vision) = inputs.vision
        && !vision.errors_detected.is_empty()
    {
        c *= VISION_ERROR_FACTOR;
        conflicts.push(format!(
            "vision detected errors on screen: {}",
            vision.errors_detected.join("; ")
        ));
    }

    Outcome {
        confidence: (c.clamp(0.0, 1.0) * 1e6).round() / 1e6,
        conflicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_shared::wire::PlanStep;

    fn plan(conf: f64, tools: &[&str]) -> Plan {
        Plan {
            steps: tools
                .iter()
                .map(|t| PlanStep {
                    tool: t.to_string(),
                    args: Default::default(),
                    why: String::new(),
                })
                .collect(),
            answer: "a".into(),
            confidence: conf,
        }
    }

    fn verdict(kind: VerdictKind, conf: f64) -> Verdict {
        Verdict {
            verdict: kind,
            issues: vec!["wrong site".into()],
            confidence: conf,
        }
    }

    fn vision(errors: &[&str]) -> VisionAnalysis {
        VisionAnalysis {
            description: String::new(),
            elements: vec![],
            errors_detected: errors.iter().map(|s| s.to_string()).collect(),
            suggested_actions: vec![],
        }
    }

    fn base<'a>(p: Option<&'a Plan>) -> Inputs<'a> {
        Inputs {
            reasoner_requested: true,
            plan: p,
            verdict: None,
            vision: None,
            available_tools: &[],
        }
    }

    #[test]
    fn failed_reasoner_means_zero() {
        let o = synthesize(base(None));
        assert_eq!(o.confidence, 0.0);
        assert!(o.conflicts.is_empty());
    }

    #[test]
    fn plan_confidence_is_the_base() {
        let p = plan(0.8, &[]);
        assert_eq!(synthesize(base(Some(&p))).confidence, 0.8);
        let p = plan(f64::NAN, &[]);
        assert_eq!(synthesize(base(Some(&p))).confidence, 0.5);
        let p = plan(7.0, &[]);
        assert_eq!(synthesize(base(Some(&p))).confidence, 1.0);
    }

    #[test]
    fn rejection_drops_to_point_three_with_a_conflict() {
        let p = plan(0.9, &[]);
        let v = verdict(VerdictKind::Rejected, 0.9);
        let o = synthesize(Inputs {
            verdict: Some(&v),
            ..base(Some(&p))
        });
        assert_eq!(o.confidence, 0.3);
        assert_eq!(o.conflicts.len(), 1);
        assert!(o.conflicts[0].contains("wrong site"));
    }

    #[test]
    fn vision_errors_cost_twenty_percent() {
        let p = plan(0.8, &[]);
        let v = vision(&["404 page"]);
        let o = synthesize(Inputs {
            vision: Some(&v),
            ..base(Some(&p))
        });
        assert_eq!(o.confidence, 0.64);
        assert!(o.conflicts[0].contains("404 page"));
        let clean = vision(&[]);
        let o = synthesize(Inputs {
            vision: Some(&clean),
            ..base(Some(&p))
        });
        assert_eq!(o.confidence, 0.8);
    }

    #[test]
    fn agreement_raises_confidence() {
        let p = plan(0.6, &[]);
        let v = verdict(VerdictKind::Approved, 1.0);
        let o = synthesize(Inputs {
            verdict: Some(&v),
            ..base(Some(&p))
        });
        assert_eq!(o.confidence, 0.8);
        assert!(o.conflicts.is_empty());
        let v = verdict(VerdictKind::Uncertain, 1.0);
        assert_eq!(
            synthesize(Inputs {
                verdict: Some(&v),
                ..base(Some(&p))
            })
            .confidence,
            0.54
        );
    }

    #[test]
    fn rogue_tools_are_conflicts() {
        let p = plan(1.0, &["navigate", "rm_rf"]);
        let tools = vec!["navigate".to_string()];
        let o = synthesize(Inputs {
            available_tools: &tools,
            ..base(Some(&p))
        });
        assert_eq!(o.confidence, 0.8);
        assert_eq!(o.conflicts.len(), 1);
        assert!(o.conflicts[0].contains("rm_rf"));
    }

    #[test]
    fn rules_compose_in_order() {
        let p = plan(0.9, &[]);
        let v = verdict(VerdictKind::Rejected, 1.0);
        let vis = vision(&["captcha"]);
        let o = synthesize(Inputs {
            verdict: Some(&v),
            vision: Some(&vis),
            ..base(Some(&p))
        });
        assert_eq!(o.confidence, 0.24);
        assert_eq!(o.conflicts.len(), 2);
    }

    #[test]
    fn without_reasoner_the_base_is_neutral() {
        let o = synthesize(Inputs {
            reasoner_requested: false,
            ..base(None)
        });
        assert_eq!(o.confidence, 0.5);
    }
}
