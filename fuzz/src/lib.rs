//! Fuzzing on the stable toolchain, for every decoder in the fleet.
//!
//! Each crate keeps its fuzz targets next to its decoders (a `#[cfg(test)]
//! mod fuzz`), so private parsers are reachable without widening their
//! visibility. A target is a proptest property: feed the decoder arbitrary
//! bytes and structure-aware mutations of valid samples ([`Corpus`],
//! [`mutated_bytes`]) and check that it returns a value or a typed error —
//! never a panic. proptest catches the panic, shrinks the input to a small
//! edit of a known-good sample, and [`Target::run`] reports it with the seed.
//!
//! The budget comes from the environment, so the same targets serve CI and
//! long runs (`deploy/fuzz.sh`):
//! - [`ENV_CASES`] (or proptest's `PROPTEST_CASES`): inputs per target,
//!   default [`DEFAULT_CASES`];
//! - [`ENV_SEED`]: the run's seed (default 0, so CI is deterministic).
//!
//! Every target prints one line, `orch-fuzz target=<name> inputs=<n> ms=<t>`,
//! which the script sums.
#![forbid(unsafe_code)]

pub mod doc;
pub mod mutate;
pub mod words;

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

pub use doc::Doc;
pub use mutate::{ByteEdit, Corpus, Edit, Input, bytes, mutated_bytes, text};
pub use proptest;

/// Inputs per target.
pub const ENV_CASES: &str = "ORCH_FUZZ_CASES";
/// proptest's own variable, honoured when [`ENV_CASES`] is unset.
pub const ENV_PROPTEST_CASES: &str = "PROPTEST_CASES";
/// Seed of the run (an unsigned integer).
pub const ENV_SEED: &str = "ORCH_FUZZ_SEED";
/// Inputs per target in a plain `cargo test`: enough to catch a regression
/// on every path the mutators reach, small enough that all targets together
/// finish in well under a minute in a debug build on two cores.
pub const DEFAULT_CASES: u32 = 256;
/// Shrink steps after a failure: plenty to reach a small input, bounded so a
/// failing long run still ends.
const MAX_SHRINK_ITERS: u32 = 20_000;

/// What a check returns: `Err` (via `prop_assert!`) for a wrong but
/// non-panicking result.
pub type Checked = Result<(), TestCaseError>;

/// Inputs per target, from the environment.
///
/// # Panics
/// When the variable is set but not a positive integer.
pub fn cases() -> u32 {
    for var in [ENV_CASES, ENV_PROPTEST_CASES] {
        if let Ok(v) = std::env::var(var) {
            return match v.trim().parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => panic!("{var} must be a positive integer, got `{v}`"),
            };
        }
    }
    DEFAULT_CASES
}

/// The run's seed, from the environment.
///
/// # Panics
/// When the variable is set but not an unsigned integer.
pub fn seed() -> u64 {
    match std::env::var(ENV_SEED) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{ENV_SEED} must be an unsigned integer, got `{v}`")),
        Err(_) => 0,
    }
}

/// One fuzz target.
#[derive(Debug, Clone)]
pub struct Target {
    name: String,
}

/// A target named `crate.decoder` (the name printed in reports).
pub fn target(name: &str) -> Target {
    Target {
        name: name.to_string(),
    }
}

impl Target {
    /// Runs `check` on [`cases`] inputs drawn from `strategy`.
    ///
    /// # Panics
    /// When `check` panics or fails on some input: the message names the
    /// target, the seed and the shrunk input.
    pub fn run<S>(self, strategy: S, check: impl Fn(S::Value) -> Checked)
    where
        S: Strategy,
        S::Value: Debug,
    {
        let cases = cases();
        let seed = seed();
        let config = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: MAX_SHRINK_ITERS,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &rng_seed(&self.name, seed));
        let mut runner = TestRunner::new_with_rng(config, rng);
        let inputs = AtomicU64::new(0);
        let started = Instant::now();
        let result = runner.run(&strategy, |value| {
            inputs.fetch_add(1, Ordering::Relaxed);
            check(value)
        });
        let inputs = inputs.into_inner();
        let ms = started.elapsed().as_millis();
        let name = &self.name;
        match result {
            Ok(()) => println!("orch-fuzz target={name} inputs={inputs} ms={ms}"),
            Err(e) => {
                println!("orch-fuzz target={name} inputs={inputs} ms={ms} FAILED");
                let detail = match e {
                    TestError::Fail(reason, input) => {
                        format!("{reason}\nminimal input: {input:?}")
                    }
                    TestError::Abort(reason) => format!("aborted: {reason}"),
                };
                panic!(
                    "fuzz target `{name}` failed after {inputs} inputs \
                     (reproduce with {ENV_SEED}={seed} {ENV_CASES}={cases}): {detail}"
                );
            }
        }
    }
}

/// Whether two JSON trees are equal, numbers compared as `f64` within a
/// relative 1e-12: serde_json's default float parser may be one ULP off, which
/// is not a decoder bug.
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => match (x.as_f64(), y.as_f64()) {
            _ if x == y => true,
            (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
            _ => false,
        },
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// A 32-byte ChaCha seed from the run's seed and the target's name, so
/// targets draw different inputs and each one is reproducible on its own.
fn rng_seed(name: &str, seed: u64) -> [u8; 32] {
    // FNV-1a over the name, then splitmix64 to spread it over 32 bytes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut state = h ^ seed;
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_trees_compare_floats_loosely() {
        use serde_json::json;
        assert!(same_json(
            &json!({"a": [1.0, "x"]}),
            &json!({"a": [1.000_000_000_000_000_2, "x"]})
        ));
        assert!(!same_json(&json!({"a": 1.0}), &json!({"a": 1.1})));
        assert!(!same_json(&json!({"a": 1}), &json!({"b": 1})));
    }

    #[test]
    fn seeds_differ_per_target_and_run() {
        assert_ne!(rng_seed("a", 0), rng_seed("b", 0));
        assert_ne!(rng_seed("a", 0), rng_seed("a", 1));
        assert_eq!(rng_seed("a", 7), rng_seed("a", 7));
    }

    #[test]
    fn a_panicking_decoder_is_reported_with_a_shrunk_input() {
        let corpus = Corpus::new().json(serde_json::json!({"task": "hello"}));
        let outcome = std::panic::catch_unwind(|| {
            target("fuzz.self_test").run(corpus.json_inputs(), |input| {
                // A "decoder" that panics on any input containing `}}`.
                if input.bytes().windows(2).any(|w| w == b"}}") {
                    panic!("boom");
                }
                Ok(())
            });
        });
        let msg = outcome.expect_err("the bug is found");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("fuzz.self_test") && msg.contains("minimal input"),
            "{msg}"
        );
    }

    #[test]
    fn the_mutators_cover_both_codecs() {
        let corpus = Corpus::new().json(serde_json::json!({"task": "hello", "n": [1, 2]}));
        let mut seen_valid_json = false;
        let mut seen_invalid_json = false;
        let mut runner = TestRunner::deterministic();
        for _ in 0..500 {
            let input = corpus
                .json_inputs()
                .new_tree(&mut runner)
                .unwrap()
                .current();
            match serde_json::from_slice::<serde_json::Value>(input.bytes()) {
                Ok(_) => seen_valid_json = true,
                Err(_) => seen_invalid_json = true,
            }
        }
        assert!(seen_valid_json && seen_invalid_json);
        let mut seen_msgpack = false;
        for _ in 0..200 {
            let input = corpus
                .msgpack_inputs()
                .new_tree(&mut runner)
                .unwrap()
                .current();
            seen_msgpack |= Doc::from_msgpack(input.bytes()).is_ok();
        }
        assert!(seen_msgpack);
    }
}
