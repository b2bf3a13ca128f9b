//! A saga's version: which shape of the saga wrote a run. Runs remember their next step by
//! index, so a run must only ever be driven by the shape it was written for; by default the
//! version is a fingerprint of what that index means (step names, kinds, which steps
//! compensate or handle child failures), so that inserting, removing, renaming or
//! reordering steps makes a new version without anyone having to remember to say so.

use std::fmt::Write as _;

use crate::core::StepShape;
use crate::error::{Error, Result};

/// What kind of step a saga's step is (part of the fingerprint: turning a step into a sleep
/// changes what a run at that index does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepKind {
    /// A step of user code.
    Step,
    /// A durable sleep.
    Sleep,
    /// The waiting half of a scheduled step.
    WaitUntil,
    /// The step of a periodic saga that launches the next run.
    LaunchNext,
    /// The body of a try/finally pair.
    Try,
    /// The finally of a try/finally pair.
    Finally,
}

impl StepKind {
    fn tag(self) -> &'static str {
        match self {
            StepKind::Step => "step",
            StepKind::Sleep => "sleep",
            StepKind::WaitUntil => "wait-until",
            StepKind::LaunchNext => "launch-next",
            StepKind::Try => "try",
            StepKind::Finally => "finally",
        }
    }
}

/// The longest version a saga may be given.
const MAX_VERSION_LEN: usize = 64;

/// Checks an explicit version: 1 to 64 ASCII letters, digits, `.`, `_` or `-` (it travels in
/// lists and in the database's topology, and is shown in logs and listings).
pub(crate) fn check_explicit(saga: &str, version: &str) -> Result<()> {
    let ok = !version.is_empty()
        && version.len() <= MAX_VERSION_LEN
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSaga {
            saga: saga.to_owned(),
            reason: format!(
                "version {version:?} must be 1 to {MAX_VERSION_LEN} ASCII letters, digits, '.', \
                 '_' or '-'"
            ),
        })
    }
}

/// The fingerprint of a saga's shape: `fp-` and 16 hex digits of a 64-bit FNV-1a hash of
/// each step's name, kind, and whether it compensates and handles child failures, in order.
/// Code inside a step is not part of it (changing what a step does keeps the version);
/// retry policies are not either (a run at a step is retried under the new policy).
pub(crate) fn fingerprint(shapes: &[StepShape], kinds: &[StepKind]) -> String {
    let mut canonical = String::new();
    for (shape, kind) in shapes.iter().zip(kinds) {
        // Separators that cannot occur in names (validated to hold no control characters).
        let _ = write!(
            canonical,
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1e}",
            shape.name,
            kind.tag(),
            u8::from(shape.compensates),
            u8::from(shape.handles_child_failures)
        );
    }
    format!("fp-{:016x}", fnv1a(canonical.as_bytes()))
}

/// The shape as the topology records it (`saga_versions.steps`): one object per step with
/// its name, kind, and whether it compensates and handles child failures.
pub(crate) fn shape_json(shapes: &[StepShape], kinds: &[StepKind]) -> String {
    let steps: Vec<serde_json::Value> = shapes
        .iter()
        .zip(kinds)
        .map(|(shape, kind)| {
            serde_json::json!({
                "name": shape.name,
                "kind": kind.tag(),
                "compensates": shape.compensates,
                "handles_child_failures": shape.handles_child_failures,
            })
        })
        .collect();
    serde_json::Value::Array(steps).to_string()
}

/// 64-bit FNV-1a: stable across Rust versions and platforms (unlike `DefaultHasher`), which
/// a value stored in the database must be.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(names: &[&str]) -> Vec<StepShape> {
        names.iter().map(|n| StepShape::plain(n)).collect()
    }

    #[test]
    fn the_fingerprint_is_stable_and_sees_order_names_kinds_and_handlers() {
        let kinds = [StepKind::Step; 3];
        let base = fingerprint(&shapes(&["a", "b", "c"]), &kinds);
        // Pinned: a stored version must not change with the compiler or the platform.
        assert_eq!(base, fingerprint(&shapes(&["a", "b", "c"]), &kinds));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert!(base.starts_with("fp-") && base.len() == 19, "{base}");
        assert_ne!(base, fingerprint(&shapes(&["a", "c", "b"]), &kinds));
        assert_ne!(base, fingerprint(&shapes(&["a", "b", "d"]), &kinds));
        assert_ne!(base, fingerprint(&shapes(&["a", "b"]), &kinds[..2]));
        let slept = [StepKind::Step, StepKind::Sleep, StepKind::Step];
        assert_ne!(base, fingerprint(&shapes(&["a", "b", "c"]), &slept));
        let mut compensating = shapes(&["a", "b", "c"]);
        compensating[1].compensates = true;
        assert_ne!(base, fingerprint(&compensating, &kinds));
        let mut handling = shapes(&["a", "b", "c"]);
        handling[1].handles_child_failures = true;
        assert_ne!(base, fingerprint(&handling, &kinds));
        // Names are not merely concatenated.
        assert_ne!(
            fingerprint(&shapes(&["ab", "c"]), &kinds[..2]),
            fingerprint(&shapes(&["a", "bc"]), &kinds[..2])
        );
    }

    #[test]
    fn explicit_versions_are_checked() {
        for good in ["1", "v2", "2026-12-01.b", "a_b"] {
            assert!(check_explicit("h", good).is_ok(), "{good}");
        }
        for bad in ["", "v 2", "v,2", "é", &"x".repeat(65)] {
            let err = check_explicit("h", bad).unwrap_err();
            assert!(err.to_string().contains("version"), "{err}");
        }
    }
}
