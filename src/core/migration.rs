//! An operator's migration of runs between saga versions, decided without the database: the
//! step mapping by index from the two versions' recorded shapes and a mapping by name.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A step as `saga_versions.steps` records it.
#[derive(Debug, Deserialize)]
struct RecordedStep {
    name: String,
    kind: String,
}

/// Which step of `to` each step of `from` becomes, by index, plus the position after the
/// last step (a run can sit there, waiting for the children of its last step).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StepMap {
    pub(crate) from_steps: Vec<i32>,
    pub(crate) to_steps: Vec<i32>,
    /// `to`'s step names, by index (for the history entries).
    pub(crate) to_names: Vec<String>,
}

/// Maps `from`'s steps onto `to`'s: a step named in `renames` (from-name, to-name) goes to
/// that step, any other one to the step of `to` with the same name and kind, if there is one
/// and the name is not an index (an unnamed step is named after its index, which says nothing
/// about what it does once steps were inserted: those map only when named in `renames`).
/// Steps that map nowhere are left out: a run sitting at one, or having executed one, is not
/// moved. Refused when a rename names a step that does not exist in its version, maps a step
/// to one of another kind (a sleep to a step, say), or when two steps would map to one.
pub(crate) fn step_map(
    handler: &str,
    from: &str,
    to: &str,
    renames: &[(String, String)],
) -> Result<StepMap> {
    let invalid = |reason: String| Error::InvalidMigration {
        handler: handler.to_owned(),
        reason,
    };
    let parse = |json: &str| -> Result<Vec<RecordedStep>> { Ok(serde_json::from_str(json)?) };
    let (from_steps, to_steps) = (parse(from)?, parse(to)?);
    let from_names: Vec<String> = from_steps.iter().map(|s| s.name.clone()).collect();
    let to_names: Vec<String> = to_steps.iter().map(|s| s.name.clone()).collect();
    let to_index: HashMap<&str, usize> = (to_names.iter().enumerate())
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut renamed: HashMap<&str, &str> = HashMap::new();
    for (old, new) in renames {
        if !from_names.contains(old) {
            return Err(invalid(format!(
                "the mapping names step {old:?}, which the old version does not have \
                 (its steps: {from_names:?})"
            )));
        }
        if !to_index.contains_key(new.as_str()) {
            return Err(invalid(format!(
                "the mapping names step {new:?}, which the new version does not have \
                 (its steps: {to_names:?})"
            )));
        }
        renamed.insert(old, new);
    }
    let mut map = StepMap {
        from_steps: Vec::new(),
        to_steps: Vec::new(),
        to_names: to_names.clone(),
    };
    let mut targets = HashMap::new();
    for (i, name) in from_names.iter().enumerate() {
        let explicit = renamed.get(name.as_str()).copied();
        let target = match explicit {
            Some(target) => target,
            None if name.bytes().all(|b| b.is_ascii_digit()) => continue,
            None => name.as_str(),
        };
        let Some(&j) = to_index.get(target) else {
            continue;
        };
        if from_steps[i].kind != to_steps[j].kind {
            if explicit.is_none() {
                continue;
            }
            return Err(invalid(format!(
                "step {name:?} is a {} and {target:?} a {}: they cannot stand for each other",
                from_steps[i].kind, to_steps[j].kind
            )));
        }
        if let Some(other) = targets.insert(j, name) {
            return Err(invalid(format!(
                "steps {other:?} and {name:?} both map to {target:?}"
            )));
        }
        map.from_steps.push(index(i));
        map.to_steps.push(index(j));
    }
    map.from_steps.push(index(from_names.len()));
    map.to_steps.push(index(to_names.len()));
    map.to_names.push("(after the last step)".to_owned());
    Ok(map)
}

fn index(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(names: &[&str]) -> String {
        let steps: Vec<_> = names
            .iter()
            .map(|n| {
                let (name, kind) = n.split_once(':').unwrap_or((n, "step"));
                serde_json::json!({ "name": name, "kind": kind })
            })
            .collect();
        serde_json::Value::Array(steps).to_string()
    }

    #[test]
    fn steps_map_by_name_unless_renamed() {
        let map = step_map(
            "h",
            &shape(&["reserve", "charge", "ship"]),
            &shape(&["validate", "reserve", "pay", "ship"]),
            &[("charge".to_owned(), "pay".to_owned())],
        )
        .unwrap();
        // reserve 0 -> 1, charge 1 -> pay 2, ship 2 -> 3, the end 3 -> 4.
        assert_eq!(map.from_steps, [0, 1, 2, 3]);
        assert_eq!(map.to_steps, [1, 2, 3, 4]);
        assert_eq!(map.to_names[2], "pay");
    }

    #[test]
    fn unmapped_steps_are_left_out_and_bad_mappings_refused() {
        let map = step_map("h", &shape(&["a", "b"]), &shape(&["a", "c"]), &[]).unwrap();
        assert_eq!(map.from_steps, [0, 2]);
        assert_eq!(map.to_steps, [0, 2]);
        let err = step_map(
            "h",
            &shape(&["a"]),
            &shape(&["a"]),
            &[("x".to_owned(), "a".to_owned())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("old version does not have"),
            "{err}"
        );
        let err = step_map(
            "h",
            &shape(&["a"]),
            &shape(&["a"]),
            &[("a".to_owned(), "y".to_owned())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("new version does not have"),
            "{err}"
        );
    }

    #[test]
    fn index_names_kinds_and_shared_targets_are_guarded() {
        // "1" is an unnamed step in both: it maps only when named; a sleep is not a step.
        let map = step_map(
            "h",
            &shape(&["a", "1:sleep"]),
            &shape(&["x", "1:sleep", "a"]),
            &[],
        )
        .unwrap();
        assert_eq!((map.from_steps, map.to_steps), (vec![0, 2], vec![2, 3]));
        let map = step_map(
            "h",
            &shape(&["a", "1:sleep"]),
            &shape(&["x", "1:sleep", "a"]),
            &[("1".to_owned(), "1".to_owned())],
        )
        .unwrap();
        assert_eq!(
            (map.from_steps, map.to_steps),
            (vec![0, 1, 2], vec![2, 1, 3])
        );
        let err = step_map(
            "h",
            &shape(&["a", "w:sleep"]),
            &shape(&["a", "w"]),
            &[("w".to_owned(), "w".to_owned())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("is a sleep and \"w\" a step"),
            "{err}"
        );
        let err = step_map(
            "h",
            &shape(&["a", "b"]),
            &shape(&["a"]),
            &[("b".to_owned(), "a".to_owned())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("both map to \"a\""), "{err}");
    }
}
