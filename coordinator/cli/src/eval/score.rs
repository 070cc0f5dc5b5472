//! The numbers `orch eval` reports per variant: pass and valid-plan rates,
//! how well confidence predicts passing (ECE over equal-width bins, Brier
//! score), latency percentiles, tokens and fallbacks.

use std::collections::BTreeMap;

use serde::Serialize;

/// Equal-width confidence bins for ECE and the reliability diagram.
pub const BINS: usize = 10;

/// One task's outcome, as the score reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The variant that answered (see `orch eval --variant`).
    pub variant: String,
    /// Every check held.
    pub pass: bool,
    /// The answer was a plan using only available tools (or, for a verifier
    /// task, a verdict).
    pub valid: bool,
    /// The fleet's confidence, 0..=1 (0 when it gave no result at all).
    pub confidence: f64,
    /// Submit to result, as the client saw it.
    pub latency_ms: f64,
    /// Tokens the task's models reported (input + output), when any did.
    pub tokens: Option<u64>,
    /// Fallbacks the task took (entries in its fallback chain).
    pub fallbacks: u64,
}

/// One reliability bin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    /// Lower edge of the bin.
    pub lo: f64,
    /// Tasks in it.
    pub tasks: u64,
    /// Their mean confidence.
    pub mean_confidence: f64,
    /// Their observed pass rate.
    pub pass_rate: f64,
}

/// The figures of one variant; the field names are `--json`'s.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantScore {
    pub tasks: u64,
    pub pass_rate: f64,
    pub valid_rate: f64,
    pub mean_confidence: f64,
    /// Expected calibration error: Σ (bin tasks / tasks) · |pass rate − mean confidence|.
    pub ece: f64,
    /// Mean of (confidence − outcome)².
    pub brier: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// Tokens over all tasks, where models reported them.
    pub tokens: u64,
    /// Tasks that took at least one fallback.
    pub tasks_with_fallback: u64,
    /// Non-empty bins, lowest first (for the reliability diagram).
    pub bins: Vec<Bin>,
}

/// Scores each variant in `outcomes`.
pub fn by_variant(outcomes: &[Outcome]) -> BTreeMap<String, VariantScore> {
    let mut groups: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        groups.entry(&o.variant).or_default().push(o);
    }
    groups
        .into_iter()
        .map(|(name, group)| (name.to_string(), score(&group)))
        .collect()
}

fn score(group: &[&Outcome]) -> VariantScore {
    let n = group.len() as f64;
    let rate = |f: &dyn Fn(&Outcome) -> bool| group.iter().filter(|o| f(o)).count() as f64 / n;
    let outcome = |o: &Outcome| if o.pass { 1.0 } else { 0.0 };
    let confidence = |o: &Outcome| o.confidence.clamp(0.0, 1.0);
    let mut bins: Vec<(u64, f64, f64)> = vec![(0, 0.0, 0.0); BINS];
    for o in group {
        // [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]: 1.0 belongs to the last bin.
        let b = ((confidence(o) * BINS as f64) as usize).min(BINS - 1);
        bins[b].0 += 1;
        bins[b].1 += confidence(o);
        bins[b].2 += outcome(o);
    }
    let ece = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(k, conf, pass)| (k as f64 / n) * (pass / k as f64 - conf / k as f64).abs())
        .sum();
    let mut latencies: Vec<f64> = group.iter().map(|o| o.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    VariantScore {
        tasks: group.len() as u64,
        pass_rate: rate(&|o| o.pass),
        valid_rate: rate(&|o| o.valid),
        mean_confidence: group.iter().map(|o| confidence(o)).sum::<f64>() / n,
        ece,
        brier: group
            .iter()
            .map(|o| (confidence(o) - outcome(o)).powi(2))
            .sum::<f64>()
            / n,
        p50_ms: percentile(&latencies, 0.50),
        p95_ms: percentile(&latencies, 0.95),
        tokens: group.iter().filter_map(|o| o.tokens).sum(),
        tasks_with_fallback: group.iter().filter(|o| o.fallbacks > 0).count() as u64,
        bins: bins
            .iter()
            .enumerate()
            .filter(|(_, b)| b.0 > 0)
            .map(|(i, &(k, conf, pass))| Bin {
                lo: i as f64 / BINS as f64,
                tasks: k,
                mean_confidence: conf / k as f64,
                pass_rate: pass / k as f64,
            })
            .collect(),
    }
}

/// Nearest-rank percentile of sorted values (0 for none).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(variant: &str, pass: bool, confidence: f64, latency_ms: f64) -> Outcome {
        Outcome {
            variant: variant.into(),
            pass,
            valid: pass,
            confidence,
            latency_ms,
            tokens: Some(10),
            fallbacks: u64::from(!pass),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_perfectly_calibrated_variant_has_zero_ece() {
        // Confidence 0.5 on four tasks, two of which pass; 1.0 on two that pass.
        let outcomes = [
            o("a", true, 0.5, 1.0),
            o("a", false, 0.5, 2.0),
            o("a", true, 0.5, 3.0),
            o("a", false, 0.5, 4.0),
            o("a", true, 1.0, 5.0),
            o("a", true, 1.0, 6.0),
        ];
        let s = &by_variant(&outcomes)["a"];
        assert_eq!(s.tasks, 6);
        assert!(close(s.ece, 0.0), "{}", s.ece);
        assert!(close(s.pass_rate, 4.0 / 6.0));
        // Brier: four tasks at (0.5 - x)^2 = 0.25, two at 0.
        assert!(close(s.brier, 1.0 / 6.0));
        assert_eq!(s.bins.len(), 2);
        assert_eq!(s.bins[1].lo, 0.9);
        assert_eq!((s.p50_ms, s.p95_ms), (3.0, 6.0));
        assert_eq!(s.tokens, 60);
        assert_eq!(s.tasks_with_fallback, 2);
    }

    #[test]
    fn overconfidence_shows_as_ece() {
        // The seed's failure: 90 % confidence, nothing passes.
        let outcomes: Vec<Outcome> = (0..10).map(|i| o("b", i == 0, 0.9, 1.0)).collect();
        let s = &by_variant(&outcomes)["b"];
        assert!(close(s.ece, 0.8), "{}", s.ece);
        assert!(close(s.mean_confidence, 0.9));
        // One pass at (0.9-1)^2, nine fails at 0.81.
        assert!(close(s.brier, (0.01 + 9.0 * 0.81) / 10.0));
    }

    #[test]
    fn variants_are_scored_apart() {
        let outcomes = [o("x", true, 0.2, 1.0), o("y", false, 0.2, 1.0)];
        let s = by_variant(&outcomes);
        assert_eq!(s.len(), 2);
        assert!(close(s["x"].ece, 0.8));
        assert!(close(s["y"].ece, 0.2));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 10.0);
        assert_eq!(percentile(&v, 0.95), 19.0);
        assert_eq!(percentile(&v, 1.0), 20.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.95), 7.0);
    }
}
