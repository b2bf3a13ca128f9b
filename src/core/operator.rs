//! What an operator may do to runs from outside a step, and why a request is refused: a
//! rollback of finished work, a cancellation, the completion of an out-of-band handler's run.
//!
//! The client reads (and locks) what these rules look at, asks them, and writes only what
//! they allow; a refusal changes nothing.

use std::fmt;

use super::decide::{self, Transition};
use super::state::RunStatus;
use crate::failure::Failure;
use crate::ids::RunId;
use crate::inspect::Scope;
use crate::proto::{ExternalRun, TargetRun};

/// Why an operator's request was refused, in words for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal(pub(crate) String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A rollback's targets could not all be locked (`None`: one is being processed right now),
/// or there are none.
pub(crate) fn rollback_targets(
    scope: &Scope,
    locked: Option<Vec<TargetRun>>,
) -> Result<Vec<TargetRun>, Refusal> {
    let Some(targets) = locked else {
        return Err(Refusal(
            "one of its runs is being processed right now".to_owned(),
        ));
    };
    if targets.is_empty() {
        return Err(Refusal(match scope {
            Scope::Root(root) => format!("root {root} has no runs"),
            Scope::Run(_) => "there is no such run".to_owned(),
        }));
    }
    Ok(targets)
}

/// Which of the locked `targets` roll back, given the unfinished runs found around them
/// (their subtrees and ancestors, as `(handler, status)`): none while anything is still in
/// progress, and only committed ones.
pub(crate) fn rollback_runs(
    targets: &[TargetRun],
    busy: &[(String, RunStatus)],
) -> Result<Vec<RunId>, Refusal> {
    if !busy.is_empty() {
        let busy: Vec<String> = busy
            .iter()
            .map(|(handler, status)| format!("{handler} is {status}"))
            .collect();
        return Err(Refusal(format!(
            "the tree is still in progress: {}",
            busy.join(", ")
        )));
    }
    let committed: Vec<RunId> = targets
        .iter()
        .filter(|t| t.status == RunStatus::Committed)
        .map(|t| t.id)
        .collect();
    if committed.is_empty() {
        let ended: Vec<String> = targets
            .iter()
            .map(|t| format!("{} ended {}", t.handler, t.status))
            .collect();
        return Err(Refusal(format!(
            "nothing committed to roll back: {}",
            ended.join(", ")
        )));
    }
    Ok(committed)
}

/// A cancellation's target does not exist.
pub(crate) fn no_such_target(scope: &Scope) -> Refusal {
    Refusal(match scope {
        Scope::Root(root) => format!("there is no root {root}"),
        Scope::Run(run) => format!("there is no run {run}"),
    })
}

/// A cancellation needs runs still on their happy path in its scope (`active`).
pub(crate) fn cancellable(active: &[RunId]) -> Result<(), Refusal> {
    if active.is_empty() {
        return Err(Refusal(
            "nothing to cancel: no run of it is on its happy path".to_owned(),
        ));
    }
    Ok(())
}

/// Completing an external handler's run: it must exist, belong to a handler registered as
/// external, and be waiting (not finished). Returns the run and the transition to persist:
/// `SEEN` if it was never seen, then `COMMITTED`, or the failure and `ROLLED_BACK`.
pub(crate) fn complete_external(
    run: Option<&ExternalRun>,
    failure: Option<Failure>,
) -> Result<(RunId, Transition), &'static str> {
    let run = run.ok_or("there is no such run")?;
    if run.kind.as_deref() != Some("external") {
        return Err("the handler is not registered as external");
    }
    if run.view.status.is_terminal() || run.pending_children > 0 {
        return Err("the run has already finished");
    }
    Ok((
        run.id,
        decide::complete_external(&run.view, !run.seen, failure),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::RunView;

    fn target(handler: &str, status: RunStatus) -> TargetRun {
        TargetRun {
            id: RunId::from_uuid(crate::ids::new_uuid()),
            handler: handler.to_owned(),
            status,
        }
    }

    #[test]
    fn a_rollback_needs_lockable_existing_targets() {
        let root = crate::ids::RootId::from_uuid(crate::ids::new_uuid());
        let err = rollback_targets(&Scope::Root(root), None).unwrap_err();
        assert_eq!(err.0, "one of its runs is being processed right now");
        let err = rollback_targets(&Scope::Root(root), Some(Vec::new())).unwrap_err();
        assert_eq!(err.0, format!("root {root} has no runs"));
        let run = RunId::from_uuid(crate::ids::new_uuid());
        let err = rollback_targets(&Scope::Run(run), Some(Vec::new())).unwrap_err();
        assert_eq!(err.0, "there is no such run");
        let t = target("a", RunStatus::Committed);
        assert_eq!(
            rollback_targets(&Scope::Run(run), Some(vec![t.clone()])),
            Ok(vec![t])
        );
    }

    #[test]
    fn a_rollback_waits_for_the_tree_and_takes_only_committed_runs() {
        let (a, b) = (
            target("a", RunStatus::Committed),
            target("b", RunStatus::RolledBack),
        );
        let busy = vec![("child".to_owned(), RunStatus::Active)];
        let err = rollback_runs(&[a.clone(), b.clone()], &busy).unwrap_err();
        assert_eq!(err.0, "the tree is still in progress: child is active");
        assert_eq!(rollback_runs(&[a.clone(), b.clone()], &[]), Ok(vec![a.id]));
        let err = rollback_runs(&[b], &[]).unwrap_err();
        assert_eq!(err.0, "nothing committed to roll back: b ended rolled_back");
    }

    #[test]
    fn a_cancellation_needs_a_target_on_its_happy_path() {
        let run = RunId::from_uuid(crate::ids::new_uuid());
        assert_eq!(
            no_such_target(&Scope::Run(run)).0,
            format!("there is no run {run}")
        );
        assert!(cancellable(&[]).is_err());
        assert!(cancellable(&[run]).is_ok());
    }

    #[test]
    fn external_completion_rules() {
        let mut run = ExternalRun {
            id: RunId::from_uuid(crate::ids::new_uuid()),
            view: RunView::default(),
            pending_children: 0,
            seen: false,
            kind: Some("runtime".to_owned()),
        };
        assert_eq!(
            complete_external(None, None).unwrap_err(),
            "there is no such run"
        );
        assert_eq!(
            complete_external(Some(&run), None).unwrap_err(),
            "the handler is not registered as external"
        );
        run.kind = Some("external".to_owned());
        let (id, t) = complete_external(Some(&run), None).unwrap();
        assert_eq!((id, t.status), (run.id, RunStatus::Committed));
        run.view.status = RunStatus::Committed;
        assert_eq!(
            complete_external(Some(&run), None).unwrap_err(),
            "the run has already finished"
        );
    }
}
