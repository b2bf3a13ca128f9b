//! One root launched on its own (`LAUNCH_ONE`): the emission statement cut down to what a
//! single launch from outside a run writes, so that the most common launch does not pay for
//! the general statement's machinery (arrays unnested and joined, deadlines, chains, the
//! emitter's give-up check).

use super::{Emit, Literals, Sql, StmtId};

/// The lean statement for an [`Emit`] that [`LaunchOne::fits`].
#[derive(Debug)]
pub(crate) struct LaunchOne;

impl LaunchOne {
    /// Writes the message, one run per handler registered for its topic, the `EMITTED` (and
    /// if no handler has the topic, `UNHANDLED`) history, and the notifications, exactly as
    /// [`Emit`] does for a single launch without deadlines or schedule; answers with the same
    /// columns. `$1` id, `$2` topic, `$3` payload, `$4` worker, `$5` context, `$6` idempotency
    /// key, `$7` strict, `$8` handlers not to notify.
    pub(crate) const SQL: &'static str = "
WITH h AS MATERIALIZED (
    SELECT handler, version FROM __S__.handlers WHERE topic = $2
),
refused AS MATERIALIZED (SELECT $7::bool AND NOT EXISTS (SELECT 1 FROM h) AS yes),
msg AS (
    INSERT INTO __S__.messages (id, root_id, topic, payload, run_count, idempotency_key,
                                context, unhandled)
    SELECT $1::uuid, $1::uuid, $2, $3::jsonb, 0, $6, $5, NOT EXISTS (SELECT 1 FROM h)
    FROM refused WHERE NOT refused.yes
    ON CONFLICT DO NOTHING
    RETURNING id, unhandled
),
child AS (
    INSERT INTO __S__.runs (id, root_id, message_id, handler, topic, wake_at, context, version)
    SELECT __S__.uuid_v7(), msg.id, msg.id, h.handler, $2, clock_timestamp(), $5, h.version
    FROM msg, h
    RETURNING handler
),
hist AS (
    INSERT INTO __S__.history (root_id, message_id, event, worker)
    SELECT msg.id, msg.id, k.event, $4
    FROM msg CROSS JOIN (VALUES (1, 'EMITTED'), (2, 'UNHANDLED')) AS k(n, event)
    WHERE k.n = 1 OR msg.unhandled
    ORDER BY k.n
),
notified AS MATERIALIZED (
    SELECT pg_notify('__S___wake', w.handler)
    FROM (SELECT DISTINCT handler FROM child) w WHERE w.handler <> ALL($8::text[])
)
SELECT 0 AS children,
       coalesce((SELECT array_agg(DISTINCT handler) FROM child), '{}') AS woken,
       (SELECT count(*) FROM notified)::int4 AS notified,
       coalesce((SELECT array_agg(id) FROM msg), '{}') AS launched,
       CASE WHEN (SELECT yes FROM refused) OR (SELECT unhandled FROM msg) THEN ARRAY[$2]
            ELSE '{}' END AS unhandled,
       (SELECT yes FROM refused) AS refused";

    const TYPES: &'static str = "uuid, text, text, text, text, text, bool, text[]";

    /// Whether `e` is a single launch from outside any run, without deadlines or schedule.
    pub(crate) fn fits(e: &Emit<'_>) -> bool {
        e.ids.len() == 1
            && e.run.is_none()
            && e.check.is_none()
            && !e.scoped[0]
            && e.run_counts[0] == 0
            && e.deadlines[0].is_none()
            && e.not_before[0].is_none()
            && e.chains[0].is_none()
            && e.schedules[0].is_none()
    }

    /// `e` (which [fits](Self::fits)) as simple-query text executing the statement prepared
    /// as `name` (prepared first unless `prepared`); `None` when a parameter cannot travel
    /// inside query text. Its plan is the same for every launch, so no setting is needed.
    pub(crate) fn simple_text(
        e: &Emit<'_>,
        sql: &Sql,
        name: &str,
        prepared: bool,
    ) -> Option<String> {
        let args = Literals::default()
            .uuid(&e.ids[0])
            .text(&e.topics[0])
            .text(&e.payloads[0])
            .text(e.worker)
            .opt_text(e.contexts[0].as_deref())
            .opt_text(e.keys[0].as_deref())
            .opt_bool(Some(e.strict[0]))
            .text_array(e.quiet)
            .done()?;
        let mut text = String::new();
        if !prepared {
            text.push_str(&format!(
                "PREPARE {name} ({}) AS {}; ",
                LaunchOne::TYPES,
                sql.text(StmtId::LaunchOne)
            ));
        }
        text.push_str(&format!("EXECUTE {name}({args})"));
        Some(text)
    }
}
