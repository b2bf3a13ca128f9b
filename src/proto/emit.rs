//! Writing messages (children of a run, launches) and the durable topology they fan out to.

use std::time::SystemTime;

use postgres::Row;
use postgres::types::ToSql;
use uuid::Uuid;

use postgres::SimpleQueryMessage;

use super::{
    Cols, GiveUpCheck, LaunchOne, Literals, Simple, Sql, Statement, StmtId, first_row, one, u32_col,
};
use crate::error::{Error, Result};
use crate::ids::{RootId, RunId};
use crate::saga::Emission;

/// Who emits: the run, its step instance, and names for the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Emitter<'a> {
    pub(crate) root_id: RootId,
    pub(crate) run_id: RunId,
    pub(crate) instance: u32,
    pub(crate) handler: &'a str,
    pub(crate) step: String,
}

/// Writes emitted messages: children of a run (`scoped`), launches on the global scope from a
/// step, or launches from outside (no emitter).
#[derive(Debug)]
pub(crate) struct Emit<'a> {
    pub(crate) ids: Vec<Uuid>,
    pub(crate) topics: Vec<String>,
    pub(crate) payloads: Vec<String>,
    pub(crate) scoped: Vec<bool>,
    pub(crate) root: Option<Uuid>,
    pub(crate) run: Option<Uuid>,
    pub(crate) instance: Option<i32>,
    pub(crate) handler: Option<&'a str>,
    pub(crate) step: Option<String>,
    pub(crate) worker: &'a str,
    pub(crate) deadlines: Vec<Option<String>>,
    pub(crate) run_counts: Vec<i32>,
    pub(crate) check: Option<bool>,
    /// Handlers that get runs but no notification (the calling runtime wakes them itself).
    pub(crate) quiet: &'a [&'a str],
    pub(crate) contexts: Vec<Option<String>>,
    /// Launches' idempotency keys.
    pub(crate) keys: Vec<Option<String>>,
    /// Scheduled occurrences: not before when, of which chain, on which schedule.
    pub(crate) not_before: Vec<Option<SystemTime>>,
    pub(crate) chains: Vec<Option<String>>,
    pub(crate) schedules: Vec<Option<String>>,
    /// Whether an emission on a topic nobody handles is refused (else only marked).
    pub(crate) strict: Vec<bool>,
}

impl<'a> Emit<'a> {
    /// Writes `emissions` (children of `emitter`, or global launches without one). With a
    /// check, the emitter's give-up check runs first. `strict` says whether an emission on a
    /// topic without handlers is refused, for emissions that do not say it themselves.
    pub(crate) fn new(
        emitter: Option<Emitter<'a>>,
        emissions: Vec<Emission>,
        worker: &'a str,
        quiet: &'a [&'a str],
        check: GiveUpCheck,
        strict: bool,
    ) -> Emit<'a> {
        let n = emissions.len();
        let mut emit = Emit {
            ids: Vec::with_capacity(n),
            topics: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            scoped: Vec::with_capacity(n),
            root: emitter.as_ref().map(|e| e.root_id.as_uuid()),
            run: emitter.as_ref().map(|e| e.run_id.as_uuid()),
            instance: emitter.as_ref().map(|e| e.instance as i32),
            handler: emitter.as_ref().map(|e| e.handler),
            worker,
            deadlines: Vec::with_capacity(n),
            run_counts: Vec::with_capacity(n),
            check: check.param(),
            quiet,
            contexts: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            not_before: Vec::with_capacity(n),
            chains: Vec::with_capacity(n),
            schedules: Vec::with_capacity(n),
            strict: Vec::with_capacity(n),
            step: emitter.map(|e| e.step),
        };
        for e in emissions {
            emit.ids.push(e.id);
            emit.topics.push(e.topic);
            emit.payloads.push(e.payload);
            emit.scoped.push(e.scoped && emit.run.is_some());
            emit.deadlines.push(e.deadlines);
            emit.run_counts.push(e.run_count as i32);
            emit.contexts.push(e.context);
            emit.keys.push(e.key);
            emit.strict.push(e.strict.unwrap_or(strict));
            let occurrence = e.occurrence;
            emit.not_before.push(occurrence.as_ref().map(|o| o.at));
            emit.schedules
                .push(occurrence.as_ref().map(|o| o.schedule.clone()));
            emit.chains.push(occurrence.map(|o| o.chain));
        }
        emit
    }

    /// One run per registered handler of each topic, `EMITTED` history, and a notification
    /// for each handler that got a run (but those in `$14`). Returns how many child runs the
    /// emitting run (`$6`) got and which handlers got runs; the count comes from the statement
    /// that inserts the runs, so a handler registering concurrently cannot make it disagree
    /// with the rows. With `$13` set, the emitter's give-up check runs before anything is
    /// written (see `check_give_up`). A launch whose idempotency key (`$16`) is taken, or an
    /// occurrence of a chain (`$18`, run count `$12`) that exists already, writes nothing, and
    /// neither does an occurrence of a stopped chain; `launched` lists the messages that were
    /// written. (A unique index makes a concurrent duplicate wait for the first one's
    /// transaction.) A scheduled occurrence's runs are due at `$17`, or at a deadline before.
    ///
    /// An emission on a topic without registered handlers gets an `UNHANDLED` history entry
    /// and is listed in `unhandled`; if it is strict (`$20`), nothing at all is written and
    /// `refused` says so.
    pub(crate) const SQL: &'static str = "
WITH checked AS MATERIALIZED (
    -- As in `Finish`: without deadlines or a cancellation in the tree, one index probe.
    SELECT CASE WHEN $13::bool IS NULL THEN true
                WHEN NOT EXISTS (SELECT 1 FROM __S__.runs r WHERE r.id = $6::uuid
                                   AND (r.happy_deadline IS NOT NULL
                                        OR r.rollback_deadline IS NOT NULL
                                        OR r.absolute_deadline IS NOT NULL))
                     AND NOT EXISTS (SELECT 1 FROM __S__.cancellations k
                                     WHERE k.root_id = $5::uuid) THEN true
                ELSE __S__.check_give_up($5::uuid, $6::uuid, $13::bool) END AS ok
),
given AS MATERIALIZED (
    SELECT e.*, NOT EXISTS (SELECT 1 FROM __S__.handlers h WHERE h.topic = e.topic) AS bare
    FROM checked,
        unnest($1::uuid[], $2::text[], $3::text[], $4::bool[], $11::text[], $12::int4[],
               $15::text[], $16::text[], $17::timestamptz[], $18::text[], $19::text[],
               $20::bool[])
        WITH ORDINALITY AS e(id, topic, payload, scoped, deadlines, run_count, context, key,
                             not_before, chain, schedule, strict, ord)
    WHERE checked.ok
),
refused AS MATERIALIZED (SELECT EXISTS (SELECT 1 FROM given WHERE bare AND strict) AS yes),
e AS (SELECT given.* FROM given, refused WHERE NOT refused.yes),
msg AS (
    INSERT INTO __S__.messages (id, root_id, topic, payload, parent_run_id, parent_instance,
                                run_count, idempotency_key, context, chain, schedule,
                                scheduled_for, unhandled)
    SELECT e.id, CASE WHEN e.scoped THEN $5::uuid ELSE e.id END, e.topic, e.payload::jsonb,
           CASE WHEN e.scoped THEN $6::uuid END, CASE WHEN e.scoped THEN $7::int4 END,
           coalesce(e.run_count, 0), e.key, CASE WHEN NOT e.scoped THEN e.context END,
           e.chain, e.schedule, e.not_before, e.bare
    FROM e
    WHERE e.chain IS NULL
       OR NOT EXISTS (SELECT 1 FROM __S__.chain_stops s WHERE s.chain = e.chain)
    ORDER BY e.ord
    ON CONFLICT DO NOTHING
    RETURNING id
),
-- The emissions written (all but launches whose key was taken).
w AS (SELECT e.* FROM e JOIN msg USING (id)),
inherits AS MATERIALIZED (
    SELECT EXISTS (SELECT 1 FROM __S__.runs r
                   WHERE r.id = $6::uuid AND r.deadline_trace IS NOT NULL) AS yes
),
ed AS MATERIALIZED (
    -- Deadlines: a child inherits its emitter's, the earliest of each kind wins (see
    -- child_deadlines). Computed only when the emission gives some or the emitter has some:
    -- the condition filters the emissions before the function is called (a filter on the
    -- join would call it for every emission first).
    SELECT e.id, d.happy, d.rollback, d.absolute, d.trace
    FROM w e, inherits i,
        LATERAL __S__.child_deadlines(CASE WHEN e.scoped THEN $6::uuid END, e.deadlines::jsonb) d
    WHERE e.deadlines IS NOT NULL OR (e.scoped AND i.yes)
    UNION ALL
    SELECT e.id, NULL, NULL, NULL, NULL
    FROM w e, inherits i
    WHERE NOT (e.deadlines IS NOT NULL OR (e.scoped AND i.yes))
),
child AS (
    INSERT INTO __S__.runs (id, root_id, parent_id, parent_instance, message_id, handler, topic,
                            happy_deadline, rollback_deadline, absolute_deadline, deadline_trace,
                            wake_at, context, version)
    SELECT __S__.uuid_v7(), CASE WHEN e.scoped THEN $5::uuid ELSE e.id END,
           CASE WHEN e.scoped THEN $6::uuid END, CASE WHEN e.scoped THEN $7::int4 END,
           e.id, h.handler, e.topic, d.happy, d.rollback, d.absolute, d.trace,
           least(greatest(clock_timestamp(), coalesce(e.not_before, clock_timestamp())),
                 d.happy, d.absolute),
           e.context, h.version
    FROM w e JOIN ed d ON d.id = e.id JOIN __S__.handlers h ON h.topic = e.topic
    RETURNING parent_id, handler
),
hist AS (
    INSERT INTO __S__.history (root_id, run_id, message_id, event, handler, step, worker)
    SELECT CASE WHEN e.scoped THEN $5::uuid ELSE e.id END, CASE WHEN e.scoped THEN $6::uuid END,
           e.id, k.event, CASE WHEN e.scoped THEN $8::text END,
           CASE WHEN e.scoped THEN $9::text END, $10::text
    FROM w e CROSS JOIN LATERAL (VALUES (1, 'EMITTED'), (2, 'UNHANDLED')) AS k(n, event)
    WHERE k.n = 1 OR e.bare
    ORDER BY e.ord, k.n
),
woken AS (SELECT DISTINCT handler FROM child),
notified AS MATERIALIZED (
    SELECT pg_notify('__S___wake', w.handler) FROM woken w WHERE w.handler <> ALL($14::text[])
)
SELECT (SELECT count(*) FROM child WHERE parent_id IS NOT NULL)::int4 AS children,
       coalesce((SELECT array_agg(handler) FROM woken), '{}') AS woken,
       (SELECT count(*) FROM notified)::int4 AS notified,
       coalesce((SELECT array_agg(id) FROM msg), '{}') AS launched,
       coalesce(CASE WHEN (SELECT yes FROM refused)
                     THEN (SELECT array_agg(topic ORDER BY ord) FROM given WHERE bare AND strict)
                     ELSE (SELECT array_agg(topic ORDER BY ord) FROM w WHERE bare) END,
                '{}') AS unhandled,
       (SELECT yes FROM refused) AS refused";
}

/// What an emission created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Emitted {
    /// Child runs created for the emitting run.
    pub(crate) children: u32,
    /// Handlers that got new runs.
    pub(crate) handlers: Vec<String>,
    /// The messages written (a launch whose idempotency key was taken is not).
    pub(crate) written: Vec<Uuid>,
    /// The topics of written messages that no handler was registered for (one per message);
    /// when `refused`, those of the strict emissions that caused it.
    pub(crate) unhandled: Vec<String>,
    /// A strict emission had no handler: nothing was written.
    pub(crate) refused: bool,
}

impl Statement for Emit<'_> {
    type Output = Emitted;

    fn id(&self) -> StmtId {
        StmtId::Emit
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.ids,
            &self.topics,
            &self.payloads,
            &self.scoped,
            &self.root,
            &self.run,
            &self.instance,
            &self.handler,
            &self.step,
            &self.worker,
            &self.deadlines,
            &self.run_counts,
            &self.check,
            &self.quiet,
            &self.contexts,
            &self.keys,
            &self.not_before,
            &self.chains,
            &self.schedules,
            &self.strict,
        ]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Emitted> {
        decode_emitted(&one(rows)?)
    }
}

/// The emission's one row, in either format.
fn decode_emitted(row: &impl Cols) -> Result<Emitted> {
    Ok(Emitted {
        children: u32_col(row, "children")?,
        handlers: row.str_array("woken")?,
        written: row.uuid_array("launched")?,
        unhandled: row.str_array("unhandled")?,
        // NULL when the give-up check stopped everything (nothing was written either).
        refused: row.opt_bool("refused")?.unwrap_or(false),
    })
}

impl Emit<'_> {
    /// Which prepared statement [`Emit::simple_text`] executes: the lean one for a single
    /// launch from outside a run ([`LaunchOne`]), else the general one.
    pub(crate) fn simple_kind(&self) -> Simple {
        if LaunchOne::fits(self) {
            Simple::Launch
        } else {
            Simple::Emit
        }
    }

    /// The parameters' types, in order, for the `PREPARE` of [`Emit::simple_text`].
    const TYPES: &'static str = "uuid[], text[], text[], bool[], uuid, uuid, int4, text, text, \
        text, text[], int4[], bool, text[], text[], text[], timestamptz[], text[], text[], bool[]";

    /// The emission as simple-query text: the statement prepared as `name` (prepared first
    /// unless `prepared`) with its parameters as literals, after `SET LOCAL plan_cache_mode =
    /// force_generic_plan`. That is the point: with bound parameters PostgreSQL plans this
    /// statement afresh for every call (its estimate of the generic plan, blind to the
    /// arrays' lengths, is several times the custom plans'), which costs more than executing
    /// it. Alone, the setting lasts for the implicit transaction of this one query; inside a
    /// step's transaction, `in_tx` puts it back to the session's value right after, so that
    /// nothing else in the transaction is planned differently. `None` when a parameter
    /// cannot travel inside query text (it holds U+0000).
    pub(crate) fn simple_text(
        &self,
        sql: &Sql,
        name: &str,
        prepared: bool,
        in_tx: bool,
    ) -> Option<String> {
        if self.simple_kind() == Simple::Launch {
            return LaunchOne::simple_text(self, sql, name, prepared);
        }
        let args = Literals::default()
            .uuid_array(&self.ids)
            .text_array(&self.topics.iter().map(String::as_str).collect::<Vec<_>>())
            .text_array(&self.payloads.iter().map(String::as_str).collect::<Vec<_>>())
            .bool_array(&self.scoped)
            .opt_uuid(self.root.as_ref())
            .opt_uuid(self.run.as_ref())
            .opt_int(self.instance.map(i64::from))
            .opt_text(self.handler)
            .opt_text(self.step.as_deref())
            .text(self.worker)
            .opt_text_array(&self.deadlines)
            .int_array(&self.run_counts)
            .opt_bool(self.check)
            .text_array(self.quiet)
            .opt_text_array(&self.contexts)
            .opt_text_array(&self.keys)
            .opt_time_array(&self.not_before)
            .opt_text_array(&self.chains)
            .opt_text_array(&self.schedules)
            .bool_array(&self.strict)
            .done()?;
        let mut text = String::from("SET LOCAL plan_cache_mode = force_generic_plan; ");
        if !prepared {
            text.push_str(&format!(
                "PREPARE {name} ({}) AS {}; ",
                Emit::TYPES,
                sql.text(StmtId::Emit)
            ));
        }
        text.push_str(&format!("EXECUTE {name}({args})"));
        if in_tx {
            text.push_str("; SET LOCAL plan_cache_mode TO DEFAULT");
        }
        Some(text)
    }

    /// Decodes what [`Emit::simple_text`] returned.
    pub(crate) fn decode_simple(&self, messages: Vec<SimpleQueryMessage>) -> Result<Emitted> {
        let row = first_row(messages);
        decode_emitted(
            &row.ok_or_else(|| Error::UnexpectedData("the emission returned no row".to_owned()))?,
        )
    }
}

/// Adds (topic, handler) pairs of a kind (`runtime` or `external`) to the durable topology,
/// with the version new runs of the handler get, and records the shapes of the saga versions
/// a runtime serves. The (handler, version) pairs already recorded with another shape (two
/// sagas given the same explicit version) come back: the caller then rolls back.
#[derive(Debug)]
pub(crate) struct Register<'a> {
    topics: Vec<&'a str>,
    handlers: Vec<&'a str>,
    kind: &'static str,
    /// The version new runs get, per pair (`None` for external handlers).
    newest: Vec<Option<&'a str>>,
    /// Every served version: handler, version, shape (JSON).
    version_handlers: Vec<&'a str>,
    versions: Vec<&'a str>,
    shapes: Vec<String>,
}

/// A handler's registration as a runtime makes it: its topic, name, and every version it
/// serves (newest first) with its shape as JSON.
#[derive(Debug)]
pub(crate) struct Served<'a> {
    pub(crate) topic: &'a str,
    pub(crate) handler: &'a str,
    pub(crate) versions: Vec<(&'a str, String)>,
}

impl<'a> Register<'a> {
    /// Pairs registered by a client (external handlers, or runtime handlers ahead of their
    /// runtime): no versions, and the version new runs get stays what a runtime said.
    pub(crate) fn external(pairs: &[(&'a str, &'a str)], kind: &'static str) -> Register<'a> {
        Register {
            topics: pairs.iter().map(|p| p.0).collect(),
            handlers: pairs.iter().map(|p| p.1).collect(),
            kind,
            newest: vec![None; pairs.len()],
            version_handlers: Vec::new(),
            versions: Vec::new(),
            shapes: Vec::new(),
        }
    }

    /// A runtime's handlers.
    pub(crate) fn runtime(served: &'a [Served<'a>]) -> Register<'a> {
        let mut register = Register {
            topics: served.iter().map(|s| s.topic).collect(),
            handlers: served.iter().map(|s| s.handler).collect(),
            kind: "runtime",
            newest: (served.iter())
                .map(|s| s.versions.first().map(|v| v.0))
                .collect(),
            version_handlers: Vec::new(),
            versions: Vec::new(),
            shapes: Vec::new(),
        };
        for s in served {
            for (version, shape) in &s.versions {
                register.version_handlers.push(s.handler);
                register.versions.push(version);
                register.shapes.push(shape.clone());
            }
        }
        register
    }

    /// The versions are upserted so that the statement sees the shape stored for each one,
    /// even by a runtime starting at the same moment (`ON CONFLICT DO UPDATE` locks and reads
    /// the latest row, where a plain read would not see an uncommitted one); conflicts come
    /// back, and the caller, which runs this in a transaction, rolls it back.
    pub(crate) const SQL: &'static str = "
WITH given AS MATERIALIZED (
    SELECT * FROM unnest($5::text[], $6::text[], $7::text[]) AS g(handler, version, steps)
),
versions AS (
    INSERT INTO __S__.saga_versions AS v (handler, version, steps)
    SELECT g.handler, g.version, g.steps::jsonb FROM given g
    ON CONFLICT (handler, version) DO UPDATE SET steps = v.steps
    RETURNING v.handler, v.version, v.steps
),
conflict AS MATERIALIZED (
    SELECT v.handler, v.version
    FROM versions v JOIN given g USING (handler, version)
    WHERE v.steps <> g.steps::jsonb
),
topology AS (
    INSERT INTO __S__.handlers (topic, handler, kind, version)
    SELECT t.topic, t.handler, $3, t.version
    FROM unnest($1::text[], $2::text[], $4::text[]) AS t(topic, handler, version)
    ON CONFLICT (topic, handler) DO UPDATE
        SET kind = excluded.kind, last_started_at = clock_timestamp(),
            -- A registration without versions (a client's) keeps the runtimes' one.
            version = coalesce(excluded.version, __S__.handlers.version)
)
SELECT handler, version FROM conflict";
}

impl Statement for Register<'_> {
    /// The (handler, version) pairs recorded with another shape (then nothing was written).
    type Output = Vec<(String, String)>;

    fn id(&self) -> StmtId {
        StmtId::Register
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.topics,
            &self.handlers,
            &self.kind,
            &self.newest,
            &self.version_handlers,
            &self.versions,
            &self.shapes,
        ]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Vec<(String, String)>> {
        rows.iter()
            .map(|row| Ok((row.try_get("handler")?, row.try_get("version")?)))
            .collect()
    }
}

/// The root a launch with this idempotency key created.
#[derive(Debug)]
pub(crate) struct KeyedRoot<'a> {
    pub(crate) key: &'a str,
}

impl KeyedRoot<'_> {
    pub(crate) const SQL: &'static str = "
SELECT root_id FROM __S__.messages WHERE idempotency_key = $1";
}

impl Statement for KeyedRoot<'_> {
    /// `None` if no launch holds the key.
    type Output = Option<RootId>;

    fn id(&self) -> StmtId {
        StmtId::KeyedRoot
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.key]
    }

    fn decode(&self, rows: Vec<Row>) -> Result<Option<RootId>> {
        rows.first()
            .map(|row| Ok(RootId::from_uuid(row.try_get("root_id")?)))
            .transpose()
    }
}
