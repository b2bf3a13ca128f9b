//! An operator's migration of runs between saga versions, decided without the database: the
//! step mapping by index from the two versions' recorded shapes and a mapping by name.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A step as `saga_versions.steps` records it (only the name matters here).
#[derive(Debug, Deserialize)]
struct RecordedStep {
    name: String,
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
/// that step, any other one to the step of `to` with the same name, if there is one. Steps
/// that map nowhere are left out: a run sitting at one, or having executed one, is not moved.
/// Refused when a rename names a step that does not exist in its version.
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
    let parse = |json: &str| -> Result<Vec<String>> {
        let steps: Vec<RecordedStep> = serde_json::from_str(json)?;
        Ok(steps.into_iter().map(|s| s.name).collect())
    };
    let (from_names, to_names) = (parse(from)?, parse(to)?);
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
    for (i, name) in from_names.iter().enumerate() {
        let target = renamed.get(name.as_str()).copied().unwrap_or(name);
        if let Some(&j) = to_index.get(target) {
            map.from_steps.push(index(i));
            map.to_steps.push(index(j));
        }
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
            .map(|n| serde_json::json!({ "name": n, "kind": "step" }))
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
}
