//! Ending a step in one round trip: its transition, the commit, the release of its parent
//! (for a child that finishes) and the handler's next claim, as one simple query.
//!
//! A step otherwise ends with three or four round trips (the transition, `COMMIT` with the
//! next claim, and for a finished child `COMMIT` alone, then the release, then the claim).
//! Sent together, a failure stops the query at the failing statement, and the client only
//! learns the error, not where it happened; the step's transaction id, read by its claim,
//! tells afterwards whether the commit happened ([`Conclude::status_text`]).

use postgres::SimpleQueryMessage;

use super::{
    Applied, Claim, Claimed, Finish, Literals, Release, Simple, Sql, StmtCache, StmtId, first_row,
};
use crate::error::{Error, Result};

/// The transition of a claimed run, its commit, and what may follow the commit in the same
/// round trip.
#[derive(Debug)]
pub(crate) struct Conclude<'a> {
    pub(crate) finish: Finish<'a>,
    /// The release of the run's parent, in a transaction of its own after the commit: asked
    /// when the transition may finish a child (it does nothing unless the run is marked).
    pub(crate) release: Option<Release<'a>>,
    /// The handler's next claim, in the transaction that follows.
    pub(crate) claim: Option<Claim<'a>>,
    /// The step's transaction id (from its claim), to find out after an error whether the
    /// commit happened.
    pub(crate) xact: Option<u64>,
}

/// What a [`Conclude`] found, once it all happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Concluded {
    pub(crate) applied: Applied,
    /// The release's answer (the parent's handler, if the parent became runnable), if asked.
    pub(crate) released: Option<Option<String>>,
    /// The next claim's answer, if asked (its transaction is left open).
    pub(crate) claimed: Option<Claimed>,
}

/// Which statements a [`Conclude`]'s text prepared, to be remembered once it succeeded.
#[derive(Debug, Default)]
pub(crate) struct Prepares(Vec<(Simple, String)>);

impl Prepares {
    /// Records the preparations in `cache`.
    pub(crate) fn record(self, cache: &mut StmtCache) {
        for (s, name) in self.0 {
            cache.prepared(s, name);
        }
    }
}

impl Conclude<'_> {
    /// The query text, after `prefix` (the release of the step's savepoint), and what it
    /// prepares; `None` when a parameter cannot travel inside query text (see [`Literals`]):
    /// the caller then runs the statements one by one.
    pub(crate) fn simple_text(
        &self,
        sql: &Sql,
        cache: &StmtCache,
        prefix: &str,
    ) -> Option<(String, Prepares)> {
        let mut prepares = Prepares::default();
        let (name, prepared) = cache.simple_name(Simple::Finish);
        let mut text = self.finish.simple_text(sql, &name, prepared, prefix)?;
        if !prepared {
            prepares.0.push((Simple::Finish, name));
        }
        text.push_str("; COMMIT");
        if let Some(release) = &self.release {
            let (name, prepared) = cache.simple_name(Simple::Release);
            text.push_str("; BEGIN; ");
            if !prepared {
                text.push_str(&format!(
                    "PREPARE {name} (uuid, text[]) AS {}; ",
                    sql.text(StmtId::Release)
                ));
                prepares.0.push((Simple::Release, name.clone()));
            }
            let args = Literals::default()
                .uuid(&release.run)
                .text_array(release.quiet)
                .done()?;
            text.push_str(&format!("EXECUTE {name}({args}); COMMIT"));
        }
        if let Some(claim) = &self.claim {
            let (name, prepared) = cache.simple_name(Simple::Claim);
            text.push_str(&claim.simple_text(sql, &name, prepared, "; BEGIN; "));
            if !prepared {
                prepares.0.push((Simple::Claim, name));
            }
        }
        Some((text, prepares))
    }

    /// Decodes what [`Conclude::simple_text`] returned: the statements that return rows are,
    /// in order, the transition, the release (if asked) and the claim (if asked).
    pub(crate) fn decode_simple(&self, messages: Vec<SimpleQueryMessage>) -> Result<Concluded> {
        let mut results = results(messages).into_iter();
        let mut next = || {
            results.next().ok_or_else(|| {
                Error::UnexpectedData("a step's conclusion returned too few results".into())
            })
        };
        let applied = self.finish.decode_simple(next()?)?;
        let released = match &self.release {
            Some(release) => Some(release.decode_simple(next()?)?),
            None => None,
        };
        let claimed = match &self.claim {
            Some(claim) => Some(claim.decode_simple(next()?)?),
            None => None,
        };
        Ok(Concluded {
            applied,
            released,
            claimed,
        })
    }

    /// After an error: ends whatever transaction is open, then asks whether the step's
    /// transaction committed (`committed` or `aborted`).
    pub(crate) fn status_text(&self) -> Option<String> {
        self.xact
            .map(|x| format!("ROLLBACK; SELECT pg_xact_status('{x}'::xid8) AS status"))
    }

    /// Decodes what [`Conclude::status_text`] returned: whether the commit happened, if the
    /// server could say.
    pub(crate) fn decode_status(messages: Vec<SimpleQueryMessage>) -> Option<bool> {
        let row = first_row(messages)?;
        match row.try_get(0).ok()?? {
            "committed" => Some(true),
            "aborted" => Some(false),
            _ => None,
        }
    }
}

/// The messages of a multi-statement simple query, grouped into the results of the
/// statements that return rows (those that sent a row description), in order.
fn results(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<SimpleQueryMessage>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<SimpleQueryMessage>> = None;
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(_) => current = Some(vec![m]),
            SimpleQueryMessage::CommandComplete(_) => out.extend(current.take()),
            other => {
                if let Some(c) = current.as_mut() {
                    c.push(other);
                }
            }
        }
    }
    out
}
