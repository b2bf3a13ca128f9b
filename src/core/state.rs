//! The vocabulary shared by the core, the store and the public API.

use std::fmt;

/// What a step asks for next.
///
/// A step closure returning `Ok(())` means [`Next::Continue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Next {
    /// Run the following step (or finish the saga after the last one).
    #[default]
    Continue,
    /// Run this same step again; its iteration counter goes up by one.
    Repeat,
    /// Run the step at this index next (forwards or backwards).
    GoTo(usize),
    /// Run the step with this name next. An unknown name fails the run with a clear message
    /// when the step returns (a saga cannot see inside its closures when it is built).
    GoToStep(&'static str),
}

impl From<()> for Next {
    fn from((): ()) -> Self {
        Next::Continue
    }
}

/// The kinds of history events, with Scoop's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A message was emitted (by a step, or on the global scope).
    Emitted,
    /// A handler started its run for a message.
    Seen,
    /// A step finished and its run waits for its children (or for its next step).
    Suspended,
    /// A run finished successfully, after every child of its last step finished.
    Committed,
    /// A run failed and entered its rollback path.
    RollingBack,
    /// A run asked the children of one of its steps to roll back.
    RollbackEmitted,
    /// A run finished rolling back.
    RolledBack,
    /// A run's rollback failed.
    RollbackFailed,
    /// Cancellation of a run or tree was requested.
    CancellationRequested,
    /// A step's code failed transiently and will run again (the failure says why).
    Retrying,
    /// The message just emitted had no registered handler: nobody runs it and its emitter
    /// does not wait for it.
    Unhandled,
    /// An operator moved the unfinished run to another version of its saga (the entry's
    /// step says from which step to which, its worker who moved it, its failure why).
    Migrated,
}

impl EventKind {
    /// The stored (and displayed) name, e.g. `SUSPENDED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Emitted => "EMITTED",
            EventKind::Seen => "SEEN",
            EventKind::Suspended => "SUSPENDED",
            EventKind::Committed => "COMMITTED",
            EventKind::RollingBack => "ROLLING_BACK",
            EventKind::RollbackEmitted => "ROLLBACK_EMITTED",
            EventKind::RolledBack => "ROLLED_BACK",
            EventKind::RollbackFailed => "ROLLBACK_FAILED",
            EventKind::CancellationRequested => "CANCELLATION_REQUESTED",
            EventKind::Retrying => "RETRYING",
            EventKind::Unhandled => "UNHANDLED",
            EventKind::Migrated => "MIGRATED",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "EMITTED" => EventKind::Emitted,
            "SEEN" => EventKind::Seen,
            "SUSPENDED" => EventKind::Suspended,
            "COMMITTED" => EventKind::Committed,
            "ROLLING_BACK" => EventKind::RollingBack,
            "ROLLBACK_EMITTED" => EventKind::RollbackEmitted,
            "ROLLED_BACK" => EventKind::RolledBack,
            "ROLLBACK_FAILED" => EventKind::RollbackFailed,
            "CANCELLATION_REQUESTED" => EventKind::CancellationRequested,
            "RETRYING" => EventKind::Retrying,
            "UNHANDLED" => EventKind::Unhandled,
            "MIGRATED" => EventKind::Migrated,
            _ => return None,
        })
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RunStatus {
    /// On its happy path: running steps or waiting for children.
    #[default]
    Active,
    /// On its rollback path.
    RollingBack,
    /// Finished successfully.
    Committed,
    /// Finished rolling back.
    RolledBack,
    /// Its rollback failed.
    RollbackFailed,
}

impl RunStatus {
    /// The stored name, e.g. `committed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Active => "active",
            RunStatus::RollingBack => "rolling_back",
            RunStatus::Committed => "committed",
            RunStatus::RolledBack => "rolled_back",
            RunStatus::RollbackFailed => "rollback_failed",
        }
    }

    /// Parses a stored name (`active`, `rolling_back`, `committed`, `rolled_back`,
    /// `rollback_failed`).
    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "active" => RunStatus::Active,
            "rolling_back" => RunStatus::RollingBack,
            "committed" => RunStatus::Committed,
            "rolled_back" => RunStatus::RolledBack,
            "rollback_failed" => RunStatus::RollbackFailed,
            _ => return None,
        })
    }

    /// Whether the run has finished (committed, rolled back, or failed to roll back).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Committed | RunStatus::RolledBack | RunStatus::RollbackFailed
        )
    }
}

/// What the core needs to know about a claimed run.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct RunView {
    pub(crate) status: RunStatus,
    /// Index of the step to run next; equal to the number of steps once the last step ran.
    pub(crate) step_index: u32,
    /// How many consecutive times the step at `step_index` has already run.
    pub(crate) step_iteration: u32,
    /// Step instances executed so far (the next one gets this number).
    pub(crate) instances: u32,
    /// Children of the latest step instance that ended without committing.
    pub(crate) failed_children: u32,
    /// Invocations of the latest step's child-failure handler so far.
    pub(crate) cfh_iteration: Option<u32>,
    /// On the rollback path: the next sub-step of the rollback plan.
    pub(crate) rollback_cursor: Option<u32>,
    /// The step instance whose children the run last waited for.
    pub(crate) waited_instance: Option<u32>,
    /// False until a requested rollback has written its `ROLLING_BACK`.
    pub(crate) rollback_seen: bool,
}

/// When the run's next step may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Wake {
    /// At once.
    #[default]
    Now,
    /// This long after the step commits (measured with the database clock).
    After(std::time::Duration),
    /// Not before this time.
    At(std::time::SystemTime),
}

/// What a saga tells the core about one of its steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StepShape {
    pub(crate) name: String,
    /// The step has a compensating action.
    pub(crate) compensates: bool,
    /// The step has its own child-failure handler (the default rethrows).
    pub(crate) handles_child_failures: bool,
    /// How its code is retried after transient failures.
    pub(crate) retry: super::RetryPolicy,
}

/// One version of a saga, as the attempt machine needs it: which runs it drives (those that
/// recorded `version`) and their steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VersionShape {
    pub(crate) version: String,
    pub(crate) steps: Vec<StepShape>,
}

/// The name of step `index`, or `#index` if the saga has no such step (a run whose stored
/// state does not fit its saga).
pub(crate) fn step_name(steps: &[StepShape], index: usize) -> String {
    steps
        .get(index)
        .map_or_else(|| format!("#{index}"), |s| s.name.clone())
}

impl StepShape {
    #[cfg(test)]
    pub(crate) fn plain(name: &str) -> StepShape {
        StepShape {
            name: name.to_owned(),
            compensates: false,
            handles_child_failures: false,
            retry: super::RetryPolicy::default(),
        }
    }
}

/// What kind of code an executed instance ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InstanceKind {
    /// A step's body.
    Step,
    /// A step's child-failure handler.
    ChildFailures,
    /// A step's compensating action (recorded only when it emitted children).
    Compensation,
}

impl InstanceKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Step => "step",
            InstanceKind::ChildFailures => "child_failures",
            InstanceKind::Compensation => "compensation",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<InstanceKind> {
        Some(match s {
            "step" => InstanceKind::Step,
            "child_failures" => InstanceKind::ChildFailures,
            "compensation" => InstanceKind::Compensation,
            _ => return None,
        })
    }
}

/// One executed step instance of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Instance {
    pub(crate) seq: u32,
    pub(crate) step: usize,
    pub(crate) iteration: u32,
    pub(crate) cfh: Option<u32>,
    pub(crate) kind: InstanceKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in [
            EventKind::Emitted,
            EventKind::Seen,
            EventKind::Suspended,
            EventKind::Committed,
            EventKind::RollingBack,
            EventKind::RollbackEmitted,
            EventKind::RolledBack,
            EventKind::RollbackFailed,
            EventKind::CancellationRequested,
        ] {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        for s in [
            RunStatus::Active,
            RunStatus::RollingBack,
            RunStatus::Committed,
            RunStatus::RolledBack,
            RunStatus::RollbackFailed,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(EventKind::parse("nope"), None);
        assert_eq!(Next::from(()), Next::Continue);
    }
}
