//! Steps per commit (opt-in, `steps_per_commit`): a worker draining one handler runs up to
//! K steps (of different runs, or of one run) in one transaction, each under its own
//! savepoint, and commits once. This decides, for both editions' drivers, how the batch's
//! runs are claimed (several at once, then stepped through: [`Batch::claim_trip`]), what
//! ends an attempt's part of the transaction and when the batch really commits (deleting the
//! `SEEN` of claimed runs it did not reach: [`Batch::ending`]); the drivers hold the reports
//! of attempts whose writes wait for that commit and settle them after it (or drop them, if
//! the batch was rolled back: their runs are simply retried).

use std::borrow::Cow;
use std::collections::VecDeque;

use postgres::SimpleQueryMessage;

use crate::error::Result;
use crate::proto::{Claim, ClaimMany, Claimed, Queued, Savepoint, Simple, Sql, StmtCache, Unseen};

/// Releases the finished step's savepoint (`proto::Savepoint`), so savepoints never nest.
const RELEASE: &str = "RELEASE SAVEPOINT structured_cooperation_step; ";

/// How an attempt's part of the batch ended, for the attempt's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Nothing changed for earlier reports (they are still held, or there were none).
    Nothing,
    /// The batch committed: settle the held reports, then this one.
    Committed,
    /// The batch was rolled back: the held reports are void (their runs are retried).
    Voided,
}

/// A worker session's batch.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Steps per commit (1: every step commits on its own).
    size: usize,
    /// Finished steps whose writes are in the open transaction, not committed yet.
    pending: usize,
    /// What happened to the held reports since the last look (see [`Batch::take`]).
    event: Settle,
    /// Runs claimed (locked) in the open transaction, waiting for their steps.
    queue: VecDeque<Queued>,
    /// The next step's savepoint was taken already, with the last finish (see
    /// [`Batch::prime`]).
    primed: bool,
}

/// One claim's round trip, as [`Batch::claim_trip`] planned it.
#[derive(Debug)]
pub(crate) struct ClaimTrip {
    /// The query text.
    pub(crate) text: String,
    kind: TripKind,
    /// The statement the text prepares on the session, if it does.
    prepares: Option<(Simple, String)>,
}

#[derive(Debug)]
enum TripKind {
    /// [`Claim`]: one run.
    One,
    /// [`ClaimMany`]: the first run, and others to queue.
    Many,
    /// No claim: the next run waiting in the batch.
    Queued(Box<crate::proto::ClaimedRun>),
}

impl Batch {
    pub(crate) fn new(size: usize) -> Batch {
        Batch {
            size: size.max(1),
            pending: 0,
            event: Settle::Nothing,
            queue: VecDeque::new(),
            primed: false,
        }
    }

    /// What to append to a finish's round trip: the next step's savepoint, when a run
    /// waits in the batch and the next claim will not commit (so it will be that run's, and
    /// take no round trip of its own). Call [`primed`](Self::primed) once the finish ran.
    pub(crate) fn prime(&self) -> &'static str {
        if !self.queue.is_empty() && self.pending + 1 < self.size {
            "; SAVEPOINT structured_cooperation_step"
        } else {
            ""
        }
    }

    /// The finish carrying [`prime`](Self::prime)'s text succeeded.
    pub(crate) fn primed(&mut self, suffix: &str) {
        self.primed = !suffix.is_empty();
    }

    /// `statement` (which ends the transaction, or begins with ending it), with the
    /// `SEEN` of the runs still waiting deleted before its `COMMIT`: their steps did not
    /// start (see `proto::Unseen`).
    pub(crate) fn ending<'s>(&self, sql: &Sql, statement: &'s str) -> Cow<'s, str> {
        let unseen = Unseen::simple_text(
            sql,
            self.queue
                .iter()
                .filter(|q| q.seen_written)
                .map(|q| &*q.run),
        );
        match (unseen, statement.find("COMMIT")) {
            (Some(delete), Some(at)) => {
                format!("{}{delete}{}", &statement[..at], &statement[at..]).into()
            }
            _ => Cow::Borrowed(statement),
        }
    }

    /// How many runs the next claim may lock: as many steps as the batch has room for,
    /// counting its own. `after`: `None` for a claim that ends no step, else whether the
    /// claim's prefix commits (see [`next_claim`](Self::next_claim)).
    fn room(&self, after: Option<bool>) -> usize {
        let used = match after {
            None => self.pending,
            Some(true) => 0,
            Some(false) => self.pending + 1,
        };
        self.size.saturating_sub(used).max(1)
    }

    /// Plans the round trip that claims the next run after `prefix` (see `after` at
    /// [`room`](Self::room)): with one step per commit, [`Claim`]; in a batch, the next
    /// run claimed already (only its savepoint is sent, unless the last finish took it), or a
    /// [`ClaimMany`] of as many runs as the batch has room for. Answer with
    /// [`claim_answer`](Self::claim_answer).
    pub(crate) fn claim_trip(
        &mut self,
        sql: &Sql,
        cache: &StmtCache,
        c: &Claim<'_>,
        prefix: &str,
        after: Option<bool>,
    ) -> ClaimTrip {
        let prefix = if after == Some(true) {
            // The commit unlocks the runs still waiting (a claim of several may take more
            // than the batch had room left for).
            let prefix = self.ending(sql, prefix);
            self.unlocked();
            prefix
        } else {
            Cow::Borrowed(prefix)
        };
        if let Some(next) = self.queue.pop_front() {
            // Its savepoint came with the last finish, or comes now.
            let text = if std::mem::take(&mut self.primed) {
                prefix.into_owned()
            } else {
                format!("{prefix}{}", Savepoint::SQL)
            };
            return ClaimTrip {
                text,
                kind: TripKind::Queued(next.run),
                prepares: None,
            };
        }
        self.primed = false;
        let prefix = &*prefix;
        // A claim of several takes a whole batch's worth even when fewer steps are left in
        // this one (its text is prepared once per session): those it does not reach are
        // unlocked, untouched, when the batch commits.
        let (simple, kind) = if self.room(after) > 1 {
            (Simple::ClaimMany, TripKind::Many)
        } else {
            (Simple::Claim, TripKind::One)
        };
        let (name, prepared) = cache.simple_name(simple);
        let text = match kind {
            TripKind::Many => ClaimMany::simple_text(c, sql, &name, prepared, prefix, self.size),
            _ => c.simple_text(sql, &name, prepared, prefix),
        };
        ClaimTrip {
            text,
            kind,
            prepares: (!prepared).then_some((simple, name)),
        }
    }

    /// What the round trip [`claim_trip`](Self::claim_trip) planned found (`answer`: what
    /// the server returned); queues the other runs a claim of several locked.
    pub(crate) fn claim_answer(
        &mut self,
        c: &Claim<'_>,
        trip: ClaimTrip,
        answer: Result<Vec<SimpleQueryMessage>>,
        cache: &mut StmtCache,
    ) -> Result<Claimed> {
        let messages = match answer {
            Ok(messages) => messages,
            Err(e) => {
                // The transaction is lost: so are the locks on the runs waiting.
                self.unlocked();
                return Err(e);
            }
        };
        if let Some((simple, name)) = trip.prepares {
            cache.prepared(simple, name);
        }
        match trip.kind {
            TripKind::One => c.decode_simple(messages),
            TripKind::Many => {
                let (claimed, queued) = ClaimMany::decode_simple(messages)?;
                self.queue.extend(queued);
                Ok(claimed)
            }
            TripKind::Queued(run) => Ok(Claimed::Due(run)),
        }
    }

    /// The transaction ended: the runs waiting in it are unlocked, and forgotten.
    pub(crate) fn unlocked(&mut self) {
        self.queue.clear();
        self.primed = false;
    }

    /// Whether finished steps wait for the batch's commit: the attempt that just ended is
    /// one of them, and its report is to be held.
    pub(crate) fn holding(&self) -> bool {
        self.pending > 0
    }

    /// What happened to the held reports since the last call.
    pub(crate) fn take(&mut self) -> Settle {
        std::mem::replace(&mut self.event, Settle::Nothing)
    }

    /// The prefix of the claim that follows a finished step ([`Io::CommitClaim`]): the
    /// commit, or, while the batch has room, only the release of the step's savepoint.
    /// Returns it with whether it commits; answer with [`Batch::claimed`].
    ///
    /// [`Io::CommitClaim`]: crate::core::attempt::Io::CommitClaim
    /// `held`: whether the step's savepoint still exists (it is released as soon as the
    /// step's code succeeded, so the engine's writes run outside it).
    pub(crate) fn next_claim(&self, held: bool) -> (&'static str, bool) {
        if self.pending + 1 < self.size {
            (if held { RELEASE } else { "" }, false)
        } else {
            ("COMMIT; BEGIN; ", true)
        }
    }

    /// The claim [`next_claim`](Self::next_claim) prefixed was answered.
    pub(crate) fn claimed(&mut self, commits: bool, ok: bool) {
        match (commits, ok) {
            (true, true) => self.committed(),
            (false, true) => self.pending += 1,
            // Whether the commit happened is unknown: what was held is given up (its runs are
            // retried from whatever the database holds, like after any failed commit).
            (true, false) => self.voided(),
            // The transaction is aborted and will be rolled back (see `rollback_text`).
            (false, false) => self.pending += 1,
        }
    }

    /// What ends the transaction when the attempt asks for a rollback: all of it, or, with
    /// finished steps in it, only the attempt's part (back to its savepoint), committing the
    /// rest. Answer with [`Batch::ended`].
    /// Without the savepoint (`held`), the whole transaction is rolled back, batch and all.
    pub(crate) fn rollback_text(&self, held: bool) -> &'static str {
        if self.pending > 0 && held {
            "ROLLBACK TO SAVEPOINT structured_cooperation_step; COMMIT"
        } else {
            "ROLLBACK"
        }
    }

    /// A commit, or what [`rollback_text`](Self::rollback_text) said, was answered
    /// (`whole_rollback`: the statement rolled back everything, after an error).
    pub(crate) fn ended(&mut self, ok: bool, whole_rollback: bool) {
        if self.pending == 0 {
            return;
        }
        if ok && !whole_rollback {
            self.committed();
        } else {
            self.voided();
        }
    }

    fn committed(&mut self) {
        if self.pending > 0 {
            self.event = Settle::Committed;
        }
        self.pending = 0;
    }

    fn voided(&mut self) {
        if self.pending > 0 {
            self.event = Settle::Voided;
        }
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::{Batch, Settle, TripKind};
    use crate::core::RunView;
    use crate::core::attempt::tests::claimed;
    use crate::proto::{Claim, Queued, Sql, StmtCache};

    const CLAIM: Claim<'static> = Claim {
        handler: "h",
        worker: "w",
        versions: "v1",
    };

    fn queued(seen_written: bool) -> Queued {
        Queued {
            run: Box::new(claimed(RunView::default())),
            seen_written,
        }
    }

    #[test]
    fn one_step_per_commit_claims_one_run() {
        let (sql, cache) = (Sql::new("s"), StmtCache::default());
        let mut b = Batch::new(1);
        let trip = b.claim_trip(&sql, &cache, &CLAIM, "BEGIN; ", None);
        assert!(matches!(trip.kind, TripKind::One));
        assert!(
            trip.text.starts_with("BEGIN; PREPARE sc_claim_"),
            "{}",
            trip.text
        );
        assert!(trip.text.contains("LIMIT 1\n"), "{}", trip.text);
        assert_eq!(b.prime(), "");
    }

    #[test]
    fn a_batch_claims_its_size_and_steps_through_what_it_claimed() {
        let (sql, cache) = (Sql::new("s"), StmtCache::default());
        let mut b = Batch::new(4);
        let trip = b.claim_trip(&sql, &cache, &CLAIM, "BEGIN; ", None);
        assert!(matches!(trip.kind, TripKind::Many));
        assert!(trip.text.contains("LIMIT 4\n"), "{}", trip.text);
        assert!(trip.text.ends_with("SAVEPOINT structured_cooperation_step"));
        b.queue.extend([queued(true), queued(false)]);

        // The next step's claim is the first run waiting: only its savepoint.
        let (prefix, commits) = b.next_claim(true);
        let trip = b.claim_trip(&sql, &cache, &CLAIM, prefix, Some(commits));
        assert!(matches!(trip.kind, TripKind::Queued(_)));
        assert_eq!(
            trip.text,
            "RELEASE SAVEPOINT structured_cooperation_step; SAVEPOINT structured_cooperation_step"
        );
        b.claimed(commits, true);
        // A finish with a run waiting and room left takes the next savepoint itself; the
        // claim that follows then needs no round trip.
        let suffix = b.prime();
        assert_eq!(suffix, "; SAVEPOINT structured_cooperation_step");
        b.primed(suffix);
        let (prefix, commits) = b.next_claim(false);
        let trip = b.claim_trip(&sql, &cache, &CLAIM, prefix, Some(commits));
        assert!(matches!(trip.kind, TripKind::Queued(_)));
        assert_eq!(trip.text, "");
        b.claimed(commits, true);
        // The batch has room for one more step: nothing waits, so one run is claimed.
        assert_eq!(b.prime(), "");
        let (prefix, commits) = b.next_claim(false);
        let trip = b.claim_trip(&sql, &cache, &CLAIM, prefix, Some(commits));
        assert!(matches!(trip.kind, TripKind::One), "{trip:?}");
        b.claimed(commits, true);
        // The batch is full: it commits, and a new one claims four again.
        let (prefix, commits) = b.next_claim(false);
        assert!(commits);
        let trip = b.claim_trip(&sql, &cache, &CLAIM, prefix, Some(commits));
        assert!(matches!(trip.kind, TripKind::Many));
        assert!(
            trip.text
                .starts_with("COMMIT; BEGIN; PREPARE sc_claim_many_")
        );
    }

    #[test]
    fn a_batch_ending_early_deletes_the_seen_of_runs_it_did_not_reach() {
        let sql = Sql::new("s");
        let mut b = Batch::new(8);
        assert_eq!(b.ending(&sql, "COMMIT"), "COMMIT");
        b.queue.extend([queued(true), queued(false)]);
        let first = b.queue[0].run.id.as_uuid();
        let commit = b.ending(&sql, "COMMIT");
        assert!(commit.contains(" s.history"), "{commit}");
        assert!(commit.contains(&format!("'{first}'")), "{commit}");
        assert!(commit.ends_with("'SEEN'; COMMIT"), "{commit}");
        // Only the run whose SEEN the claim wrote.
        let second = b.queue[1].run.id.as_uuid();
        assert!(!commit.contains(&format!("'{second}'")), "{commit}");
        let partial = b.ending(
            &sql,
            "ROLLBACK TO SAVEPOINT structured_cooperation_step; COMMIT",
        );
        assert!(
            partial.starts_with("ROLLBACK TO SAVEPOINT structured_cooperation_step; ")
                && partial.contains(" s.history"),
            "{partial}"
        );
        assert!(partial.ends_with("; COMMIT"), "{partial}");
        // A rollback takes everything with it.
        assert_eq!(b.ending(&sql, "ROLLBACK"), "ROLLBACK");
    }

    #[test]
    fn runs_waiting_are_forgotten_when_their_transaction_ends() {
        let (sql, cache) = (Sql::new("s"), StmtCache::default());
        let mut b = Batch::new(8);
        b.queue.extend([queued(true), queued(true)]);
        b.unlocked();
        let trip = b.claim_trip(&sql, &cache, &CLAIM, "BEGIN; ", None);
        assert!(matches!(trip.kind, TripKind::Many));
        // A claim that commits first starts afresh too, deleting what the claim had seen.
        b.queue.extend([queued(true)]);
        let trip = b.claim_trip(&sql, &cache, &CLAIM, "COMMIT; BEGIN; ", Some(true));
        assert!(matches!(trip.kind, TripKind::Many));
        assert!(
            trip.text
                .find(" s.history")
                .is_some_and(|at| Some(at) < trip.text.find("COMMIT; BEGIN; ")),
            "{}",
            trip.text
        );
        assert!(b.queue.is_empty());
    }

    #[test]
    fn one_step_per_commit_always_commits() {
        let mut b = Batch::new(1);
        for _ in 0..3 {
            let (prefix, commits) = b.next_claim(true);
            assert_eq!((prefix, commits), ("COMMIT; BEGIN; ", true));
            b.claimed(commits, true);
            assert!(!b.holding());
            assert_eq!(b.take(), Settle::Nothing);
        }
        assert_eq!(b.rollback_text(true), "ROLLBACK");
    }

    #[test]
    fn k_steps_share_a_commit() {
        let mut b = Batch::new(3);
        // Step 1 ends: its savepoint is released, its report held.
        let (prefix, commits) = b.next_claim(true);
        assert!(prefix.starts_with("RELEASE SAVEPOINT") && !commits);
        b.claimed(commits, true);
        assert!(b.holding());
        // Step 2 likewise, its savepoint released already.
        let (prefix, commits) = b.next_claim(false);
        assert_eq!((prefix, commits), ("", false));
        b.claimed(commits, true);
        assert!(b.holding());
        // Step 3 fills the batch: it commits, and the held reports settle.
        let (prefix, commits) = b.next_claim(false);
        assert_eq!((prefix, commits), ("COMMIT; BEGIN; ", true));
        b.claimed(commits, true);
        assert!(!b.holding());
        assert_eq!(b.take(), Settle::Committed);
        assert_eq!(b.take(), Settle::Nothing);
    }

    #[test]
    fn a_rollback_with_steps_held_keeps_them() {
        let mut b = Batch::new(8);
        b.claimed(false, true);
        assert!(b.rollback_text(true).starts_with("ROLLBACK TO SAVEPOINT"));
        // Without the savepoint, everything goes.
        assert_eq!(b.rollback_text(false), "ROLLBACK");
        b.ended(true, false);
        assert_eq!(b.take(), Settle::Committed);
        assert_eq!(b.rollback_text(true), "ROLLBACK");
    }

    #[test]
    fn failures_void_what_is_held() {
        let mut b = Batch::new(8);
        b.claimed(false, true);
        b.ended(false, false);
        assert_eq!(b.take(), Settle::Voided);

        b.claimed(false, true);
        b.ended(true, true);
        assert_eq!(b.take(), Settle::Voided);

        b.claimed(false, true);
        b.claimed(true, false);
        assert_eq!(b.take(), Settle::Voided);
        assert!(!b.holding());
    }
}
