//! The limits of a request and the words that explain them, in one place.
//! The pipeline enforces them; the engine checks them again at submit time
//! (so a bad request never joins a batch) and re-exports this module for
//! its clients, whose commands and dialogs name the same ranges: changing a
//! limit here changes every check and message.
//!
//! Each check returns the message for the user, without a prefix; the
//! caller wraps it in its own error type.

use std::ops::RangeInclusive;
use std::time::Duration;

/// The longest wait any setting may ask for (a week). Every setting in ms
/// or s is checked against it at start: `Instant::now() + d` panics when
/// it overflows (a shutdown grace of `u64::MAX` s did), and a value beyond
/// a week is a typo or a unit mixed up, better said at start than met later.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Check a setting's wait against [`MAX_WAIT`]; the error names it.
pub fn check_wait(name: &str, d: Duration) -> Result<(), String> {
    if d > MAX_WAIT {
        return Err(format!(
            "{name} = {d:?} is longer than a week ({MAX_WAIT:?}), the most any wait may be; \
             check its unit (the name says ms or s)"
        ));
    }
    Ok(())
}

/// Most images one request may ask for.
pub const MAX_COUNT: usize = 16;
/// Most candidates one imagine request may draw (it keeps the best `count`).
pub const MAX_CANDIDATES: usize = 4 * MAX_COUNT;
/// The edit strength when none is given: 0.75 sd of the generator's
/// latents along the edit. Measured on two toy CLIPs (README, "Text that
/// means something"): every edit moved its attribute the asked way by
/// about 1 sd and the other attributes by 0.23 sd; at 1, by 1.3-1.4 sd
/// and 0.30 sd.
pub const DEFAULT_STRENGTH: f64 = 0.75;
/// Edit strengths outside this range distort faces beyond recognition.
pub const STRENGTH_RANGE: RangeInclusive<f64> = -3.0..=3.0;
/// How far variations move from their source (0 = not at all, 1 = far).
pub const AMOUNT_RANGE: RangeInclusive<f64> = 0.0..=1.0;
/// Frames of one interpolation, both ends included.
pub const FRAMES: RangeInclusive<usize> = 2..=64;

/// The strength range as people read it ("-3 to 3").
pub fn strength_span() -> String {
    format!("{} to {}", STRENGTH_RANGE.start(), STRENGTH_RANGE.end())
}

pub fn strength_ok(strength: f64) -> bool {
    strength.is_finite() && STRENGTH_RANGE.contains(&strength)
}

pub fn check_prompt(prompt: &str) -> Result<(), String> {
    if prompt.trim().is_empty() {
        return Err("the prompt is empty: describe a face, e.g. \"a man with a beard\"".into());
    }
    Ok(())
}

/// The message for an edit instruction with nothing to do.
pub const EMPTY_EDIT: &str = "the edit is empty: say what to change, e.g. \"add smile\"";

pub fn check_instruction(instruction: &str) -> Result<(), String> {
    if instruction.trim().is_empty() {
        return Err(EMPTY_EDIT.into());
    }
    Ok(())
}

pub fn check_count(count: usize, candidates: usize) -> Result<(), String> {
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(format!("count must be 1 to {MAX_COUNT}"));
    }
    if candidates < count || candidates > MAX_CANDIDATES {
        return Err(format!(
            "candidates must be between count and {MAX_CANDIDATES}"
        ));
    }
    Ok(())
}

pub fn check_strength(strength: f64) -> Result<(), String> {
    if !strength_ok(strength) {
        return Err(format!(
            "strength {strength} is out of range: use {}",
            strength_span()
        ));
    }
    Ok(())
}

pub fn check_variations(count: usize, amount: f64) -> Result<(), String> {
    if !(1..=MAX_COUNT).contains(&count) || !AMOUNT_RANGE.contains(&amount) {
        return Err(format!(
            "variations: count 1 to {MAX_COUNT}, amount {} to {}",
            AMOUNT_RANGE.start(),
            AMOUNT_RANGE.end()
        ));
    }
    Ok(())
}

pub fn check_frames(frames: usize) -> Result<(), String> {
    if !FRAMES.contains(&frames) {
        return Err(format!(
            "frames must be {} to {}",
            FRAMES.start(),
            FRAMES.end()
        ));
    }
    Ok(())
}

pub fn check_render(latents: usize) -> Result<(), String> {
    if !(1..=MAX_COUNT).contains(&latents) {
        return Err(format!("render: 1 to {MAX_COUNT} latents"));
    }
    Ok(())
}

/// Most refinement steps one request may ask for: each costs a forward and
/// backward pass through the generator and CLIP (about a second on a CPU),
/// and past a few dozen the face drifts towards CLIP's adversarial patterns.
pub const MAX_REFINE_STEPS: usize = 32;

pub fn check_refine_steps(steps: usize) -> Result<(), String> {
    if steps > MAX_REFINE_STEPS {
        return Err(format!(
            "refine: at most {MAX_REFINE_STEPS} steps (8 is typical; 0 = the mapper alone)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strength_range_reads_as_people_write_it() {
        assert_eq!(strength_span(), "-3 to 3");
        assert!(strength_ok(-3.0) && strength_ok(3.0) && !strength_ok(f64::NAN));
        assert!(check_strength(3.5).unwrap_err().contains("use -3 to 3"));
    }
}
