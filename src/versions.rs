//! Moving unfinished runs between versions of a saga, as an operator asks: what is asked
//! ([`RunMigration`]) and what happened ([`Migrated`]). Both clients run it the same way:
//! read the two versions' recorded shapes, map the steps (`core::migration`), move the runs
//! in one statement (`proto::MigrateRuns`).

use crate::core::migration::step_map;
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ids::RunId;
use crate::proto::{LockVersionRuns, MigrateRow, MigrateRuns};
use crate::validate;

/// An operator's request to move the unfinished runs of one version of a saga to another
/// (see [`Client::migrate_runs`](crate::Client::migrate_runs)).
///
/// Steps map by name: a run sitting at (or having executed) step `"charge"` of the old
/// version continues at the step named `"charge"` of the new one, unless
/// [`step`](Self::step) maps it to another name.
#[derive(Clone, Debug)]
pub struct RunMigration {
    handler: String,
    from: String,
    to: String,
    renames: Vec<(String, String)>,
    by: String,
    reason: String,
}

impl RunMigration {
    /// Moves the runs of `handler` written by version `from` to version `to` (both must have
    /// been served by a runtime, which records their shapes). `by` says who moves them,
    /// `reason` why: both go into each moved run's `MIGRATED` history entry.
    pub fn new(
        handler: impl Into<String>,
        from: impl Into<String>,
        to: impl Into<String>,
        by: impl Into<String>,
        reason: impl Into<String>,
    ) -> RunMigration {
        RunMigration {
            handler: handler.into(),
            from: from.into(),
            to: to.into(),
            renames: Vec::new(),
            by: by.into(),
            reason: reason.into(),
        }
    }

    /// Maps the old version's step `old` to the new version's step `new` (steps not named
    /// here map to the step of the same name, if the new version has one).
    pub fn step(mut self, old: impl Into<String>, new: impl Into<String>) -> RunMigration {
        self.renames.push((old.into(), new.into()));
        self
    }

    /// The handler whose runs move.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// The statement locking the runs to move (see [`LockVersionRuns`]).
    pub(crate) fn lock(&self) -> LockVersionRuns<'_> {
        LockVersionRuns {
            handler: &self.handler,
            version: &self.from,
        }
    }

    /// Checks the request and, given the two versions' recorded shapes (`None` when a
    /// version was never registered), builds the statement that moves the runs.
    pub(crate) fn statement(
        &self,
        shapes: &[(String, String)],
        locked: Vec<uuid::Uuid>,
    ) -> Result<MigrateRuns<'_>> {
        let invalid = |reason: String| Error::InvalidMigration {
            handler: self.handler.clone(),
            reason,
        };
        validate::name("handler", &self.handler)?;
        validate::name("migration's author", &self.by)?;
        if self.from == self.to {
            return Err(invalid(format!(
                "the runs are at version {:?} already",
                self.from
            )));
        }
        let shape = |version: &str| {
            shapes
                .iter()
                .find(|(v, _)| v == version)
                .map(|(_, s)| s.as_str())
                .ok_or_else(|| {
                    invalid(format!(
                        "no runtime ever served version {version:?} of it (recorded: {:?})",
                        shapes.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>()
                    ))
                })
        };
        let map = step_map(
            &self.handler,
            shape(&self.from)?,
            shape(&self.to)?,
            &self.renames,
        )?;
        let why = Failure::new(
            "structured_cooperation::Migrated",
            format!(
                "{} (from version {} to {})",
                self.reason, self.from, self.to
            ),
            self.by.clone(),
        );
        Ok(MigrateRuns {
            handler: &self.handler,
            from: &self.from,
            to: &self.to,
            from_steps: map.from_steps,
            to_steps: map.to_steps,
            to_names: map.to_names,
            by: &self.by,
            why: serde_json::to_string(&why)?,
            locked,
        })
    }
}

/// What a [`RunMigration`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migrated {
    /// The runs moved to the new version (each with a `MIGRATED` history entry).
    pub moved: Vec<RunId>,
    /// The runs left at the old version, and why.
    pub refused: Vec<RefusedRun>,
}

/// An unfinished run a migration did not move; it stays at its version, untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusedRun {
    /// The run.
    pub run: RunId,
    /// Why it was not moved.
    pub reason: String,
}

impl Migrated {
    pub(crate) fn from_rows(rows: Vec<MigrateRow>) -> Migrated {
        let mut migrated = Migrated::default();
        for row in rows {
            let run = RunId::from_uuid(row.run);
            if row.moved {
                migrated.moved.push(run);
            } else {
                let reason = if row.status == "rolling_back" {
                    "it is rolling back: its rollback finishes in the version that did the work"
                        .to_owned()
                } else {
                    format!(
                        "it sits at, or executed, a step that does not map to the new version \
                         (it is at step index {})",
                        row.step_index
                    )
                };
                migrated.refused.push(RefusedRun { run, reason });
            }
        }
        migrated
    }
}
