//! Upgrading sagas with runs in flight (issue 14): every run records the saga version that
//! wrote it, runtimes drive only the versions they serve, old versions are served beside new
//! ones, finished trees roll back with the version that did the work, and an operator can
//! move unfinished runs between versions. Two processes in a rolling deploy: see
//! `tests/multiprocess/rolling.rs`.

use std::time::Duration;

use serde_json::{Value, json};
use structured_cooperation::{
    Error, EventKind, Requested, RunMigration, RunStatus, SagaOf, StepContext, StepResult,
};

use crate::engine::{Engine, Served, both};
use crate::util::{TestDb, WAIT, eventually};

/// A step that records `what` for its run, once (a unique key catches a second time).
fn record<E: Engine>(
    s: &str,
    what: &'static str,
) -> impl Fn(&mut StepContext<'_, E::X>, &Value) -> StepResult + Send + Sync + 'static {
    let sql = format!("INSERT INTO {s}.effects (run_id, what) VALUES ($1, $2)");
    move |ctx, _| {
        let run = ctx.run_id().as_uuid();
        E::execute(ctx, &sql, &[&run, &what])?;
        Ok(())
    }
}

fn effects_table(db: &mut TestDb) {
    db.exec(&format!(
        "CREATE TABLE {}.effects (run_id uuid NOT NULL, what text NOT NULL, \
         UNIQUE (run_id, what))",
        db.schema
    ));
}

/// What was recorded for the runs of `root`, sorted.
fn effects(db: &mut TestDb, root: structured_cooperation::RootId) -> Vec<String> {
    let sql = format!(
        "SELECT e.what FROM {s}.effects e JOIN {s}.runs r ON r.id = e.run_id \
         WHERE r.root_id = $1 ORDER BY e.what",
        s = db.schema
    );
    db.admin()
        .query(sql.as_str(), &[&root.as_uuid()])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Version 1 of the order saga: reserve, sleep 1 s, ship.
fn order_v1<E: Engine>(s: &str) -> SagaOf<E::X> {
    E::saga("order")
        .step_named("reserve", record::<E>(s, "v1:reserve"))
        .sleep(Duration::from_secs(1))
        .step_named("ship", record::<E>(s, "v1:ship"))
        .build()
        .unwrap()
}

/// Version 2: a step inserted before the sleep (so index 2 means something else).
fn order_v2<E: Engine>(s: &str) -> SagaOf<E::X> {
    E::saga("order")
        .step_named("reserve", record::<E>(s, "v2:reserve"))
        .step_named("check", record::<E>(s, "v2:check"))
        .sleep(Duration::from_secs(1))
        .step_named("ship", record::<E>(s, "v2:ship"))
        .build()
        .unwrap()
}

/// Waits until the run of `root` has run its first step and sleeps.
fn wait_until_sleeping(db: &mut TestDb, root: structured_cooperation::RootId, first: &str) {
    eventually("the first step", || {
        effects(db, root).iter().any(|e| e == first)
    });
}

fn ve_01_a_sleeping_v1_run_finishes_in_v1_after_v2_is_deployed<E: Engine>() {
    let mut db = TestDb::new("ve_01");
    let s = db.schema.clone();
    let (v1, v2) = (order_v1::<E>(&s), order_v2::<E>(&s));
    let (v1_version, v2_version) = (v1.version().to_owned(), v2.version().to_owned());
    assert_ne!(
        v1_version, v2_version,
        "an inserted step makes a new version"
    );

    let old = E::runtime(&db).subscribe("orders", v1).start().unwrap();
    effects_table(&mut db);
    let sleeping = old.launch("orders", &json!({})).unwrap();
    wait_until_sleeping(&mut db, sleeping, "v1:reserve");
    old.shutdown().unwrap();

    // Version 2 alone: the sleeping run is not its to drive, however long it waits.
    let v2_only = E::runtime(&db)
        .safety_net_interval(Duration::from_millis(100))
        .subscribe("orders", order_v2::<E>(&s))
        .start()
        .unwrap();
    eventually("the sleep to end", || {
        db.query_i64(&format!(
            "SELECT count(*) FROM {s}.runs WHERE root_id = '{sleeping}' \
             AND wake_at < clock_timestamp()"
        )) == 1
    });
    let sweeps = v2_only.stats().sweeps;
    eventually("ten sweeps after it woke", || {
        v2_only.stats().sweeps >= sweeps + 10
    });
    assert_eq!(v2_only.stats().unserved_runs, 1);
    // Operators see it waiting, with its version.
    let counts = db.client().unfinished_counts().unwrap();
    let waiting = counts.iter().find(|c| c.handler == "order").unwrap();
    assert_eq!(waiting.version.as_deref(), Some(v1_version.as_str()));
    assert_eq!((waiting.runs, waiting.due), (1, 1));
    let tree = v2_only.tree(sleeping).unwrap();
    assert_eq!(tree[0].status, RunStatus::Active);
    assert_eq!(tree[0].version.as_deref(), Some(v1_version.as_str()));
    assert_eq!(effects(&mut db, sleeping), ["v1:reserve"]);
    // New launches get the newest version, and run in it.
    let fresh = v2_only.launch("orders", &json!({})).unwrap();
    let outcome = v2_only.wait_for(fresh, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::Committed);
    assert_eq!(
        effects(&mut db, fresh),
        ["v2:check", "v2:reserve", "v2:ship"]
    );
    assert_eq!(
        v2_only.tree(fresh).unwrap()[0].version.as_deref(),
        Some(v2_version.as_str())
    );
    v2_only.shutdown().unwrap();

    // Version 1 kept beside version 2: the old run finishes in version 1.
    let both_versions = E::runtime(&db)
        .subscribe("orders", order_v2::<E>(&s))
        .also_serve("orders", order_v1::<E>(&s))
        .start()
        .unwrap();
    let outcome = both_versions.wait_for(sleeping, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::Committed);
    assert_eq!(effects(&mut db, sleeping), ["v1:reserve", "v1:ship"]);
    eventually("nothing left unserved", || {
        both_versions.stats().unserved_runs == 0
    });
    // And launches still get version 2.
    let another = both_versions.launch("orders", &json!({})).unwrap();
    both_versions.wait_for(another, WAIT).unwrap();
    assert_eq!(
        effects(&mut db, another),
        ["v2:check", "v2:reserve", "v2:ship"]
    );
    both_versions.shutdown().unwrap();
}

both!(ve_01_a_sleeping_v1_run_finishes_in_v1_after_v2_is_deployed);

fn ve_02_a_committed_v1_tree_rolls_back_with_v1_compensations<E: Engine>() {
    let mut db = TestDb::new("ve_02");
    let s = db.schema.clone();
    let v1 = |s: &str| {
        E::saga("payment")
            .step_named("pay", record::<E>(s, "v1:pay"))
            .rollback({
                let undo = record::<E>(s, "v1:refund");
                move |ctx: &mut StepContext<'_, E::X>, p: &Value, _: &_| undo(ctx, p)
            })
            .build()
            .unwrap()
    };
    let v2 = E::saga("payment")
        .step_named("pay", record::<E>(&s, "v2:pay"))
        .rollback({
            let undo = record::<E>(&s, "v2:refund");
            move |ctx: &mut StepContext<'_, E::X>, p: &Value, _: &_| undo(ctx, p)
        })
        .step_named("receipt", record::<E>(&s, "v2:receipt"))
        .build()
        .unwrap();

    let old = E::runtime(&db)
        .subscribe("payments", v1(&s))
        .start()
        .unwrap();
    effects_table(&mut db);
    let root = old.launch("payments", &json!({})).unwrap();
    let outcome = old.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::Committed);
    old.shutdown().unwrap();

    let new = E::runtime(&db)
        .subscribe("payments", v2)
        .also_serve("payments", v1(&s))
        .start()
        .unwrap();
    let requested = new.rollback(root, "support", "refund asked").unwrap();
    assert!(
        matches!(requested, Requested::Recorded { .. }),
        "{requested:?}"
    );
    eventually("the rollback", || {
        new.tree(root).unwrap()[0].status == RunStatus::RolledBack
    });
    assert_eq!(effects(&mut db, root), ["v1:pay", "v1:refund"]);
    new.shutdown().unwrap();
}

both!(ve_02_a_committed_v1_tree_rolls_back_with_v1_compensations);

fn ve_03_an_operator_migrates_runs_with_a_step_mapping<E: Engine>() {
    let mut db = TestDb::new("ve_03");
    let s = db.schema.clone();
    let undo = |what: &'static str| {
        let undo = record::<E>(&s, what);
        move |ctx: &mut StepContext<'_, E::X>, p: &Value, _: &_| undo(ctx, p)
    };
    let v1 = E::saga("shipment")
        .step_named("reserve", record::<E>(&s, "v1:reserve"))
        .rollback(undo("v1:unreserve"))
        .sleep_named("wait", Duration::from_secs(1))
        .step_named("charge", record::<E>(&s, "v1:charge"))
        .build()
        .unwrap();
    // Version 2 inserts a step before the others (so every index moves), renames "charge"
    // to "pay" and adds "ship".
    let v2 = || {
        E::saga("shipment")
            .step_named("validate", record::<E>(&s, "v2:validate"))
            .step_named("reserve", record::<E>(&s, "v2:reserve"))
            .rollback(undo("v2:unreserve"))
            .sleep_named("wait", Duration::from_secs(1))
            .step_named("pay", record::<E>(&s, "v2:pay"))
            .step_named("ship", record::<E>(&s, "v2:ship"))
            .build()
            .unwrap()
    };
    let (from, to) = (v1.version().to_owned(), v2().version().to_owned());

    let old = E::runtime(&db).subscribe("shipments", v1).start().unwrap();
    effects_table(&mut db);
    let roots = [
        old.launch("shipments", &json!({})).unwrap(),
        old.launch("shipments", &json!({})).unwrap(),
    ];
    // Both sleep before "charge" (index 2): past "reserve" and "wait".
    eventually("both runs past the sleep step", || {
        db.query_i64(&format!(
            "SELECT count(*) FROM {s}.runs WHERE handler = 'shipment' AND step_index = 2"
        )) == 2
    });
    old.shutdown().unwrap();
    // Version 2 is recorded by the runtime that serves it; it cannot drive version 1's runs.
    let new = E::runtime(&db)
        .safety_net_interval(Duration::from_millis(100))
        .subscribe("shipments", v2())
        .start()
        .unwrap();
    let client = db.client();

    // Refused before anything is written: a version nobody served, a step that does not
    // exist, a sleep standing for a step.
    let migration = || RunMigration::new("shipment", &from, &to, "alice", "retire v1");
    let err = client
        .migrate_runs(&RunMigration::new(
            "shipment",
            "9",
            &to,
            "alice",
            "retire v1",
        ))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidMigration { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("no runtime ever served version \"9\""),
        "{err}"
    );
    let err = client
        .migrate_runs(&migration().step("charge", "nope"))
        .unwrap_err();
    assert!(
        err.to_string().contains("the new version does not have"),
        "{err}"
    );
    let err = client
        .migrate_runs(&migration().step("charge", "wait"))
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot stand for each other"),
        "{err}"
    );

    // Without a mapping, "charge" (where both runs sit) has no counterpart: refused per run.
    let refused = client.migrate_runs(&migration()).unwrap();
    assert!(refused.moved.is_empty(), "{refused:?}");
    assert_eq!(refused.refused.len(), 2, "{refused:?}");
    assert!(
        refused.refused[0].reason.contains("does not map"),
        "{refused:?}"
    );
    for root in roots {
        let run = &new.tree(root).unwrap()[0];
        assert_eq!(run.version.as_deref(), Some(from.as_str()));
        assert_eq!(run.step_index, 2);
    }

    // With "charge" mapped to "pay", both move (to index 3), and version 2 runs them on.
    let migrated = client
        .migrate_runs(&migration().step("charge", "pay"))
        .unwrap();
    assert_eq!(migrated.moved.len(), 2, "{migrated:?}");
    assert!(migrated.refused.is_empty(), "{migrated:?}");
    for root in roots {
        let outcome = new.wait_for(root, WAIT).unwrap();
        assert_eq!(outcome.runs()[0].status, RunStatus::Committed);
        assert_eq!(effects(&mut db, root), ["v1:reserve", "v2:pay", "v2:ship"]);
        let history = new.history(root).unwrap();
        let moved: Vec<_> = history
            .iter()
            .filter(|e| e.kind == EventKind::Migrated)
            .collect();
        assert_eq!(moved.len(), 1, "{history:?}");
        assert_eq!(moved[0].worker.as_deref(), Some("alice"));
        assert_eq!(moved[0].step.as_deref(), Some("pay"));
        let why = moved[0].failure.as_ref().expect("the reason");
        assert!(why.message().contains("retire v1"), "{why:?}");
        assert_eq!(
            new.tree(root).unwrap()[0].version.as_deref(),
            Some(to.as_str())
        );
    }

    // The steps it executed were renumbered with it: rolled back now, the run undoes
    // "reserve" with version 2's compensation (found at its new index).
    let requested = new
        .rollback(roots[0], "support", "order cancelled")
        .unwrap();
    assert!(
        matches!(requested, Requested::Recorded { .. }),
        "{requested:?}"
    );
    eventually("the rollback", || {
        new.tree(roots[0]).unwrap()[0].status == RunStatus::RolledBack
    });
    assert_eq!(
        effects(&mut db, roots[0]),
        ["v1:reserve", "v2:pay", "v2:ship", "v2:unreserve"]
    );
    new.shutdown().unwrap();
}

both!(ve_03_an_operator_migrates_runs_with_a_step_mapping);

#[test]
fn ve_04_two_shapes_under_one_explicit_version_are_refused() {
    let db = TestDb::new("ve_04");
    let noop = |_: &mut StepContext<'_>, _: &Value| -> StepResult { Ok(()) };
    let first = structured_cooperation::Saga::builder("x")
        .version("1")
        .step(noop)
        .build()
        .unwrap();
    let runtime = db.runtime().subscribe("t", first).start().unwrap();
    runtime.shutdown().unwrap();
    let changed = structured_cooperation::Saga::builder("x")
        .version("1")
        .step(noop)
        .step(noop)
        .build()
        .unwrap();
    let err = db.runtime().subscribe("t", changed).start().unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(
        err.to_string()
            .contains("already recorded with another shape"),
        "{err}"
    );
}

#[test]
fn ve_05_older_versions_must_belong_to_a_subscription_and_differ() {
    let db = TestDb::new("ve_05");
    let saga = |steps: usize| {
        let mut b = structured_cooperation::Saga::builder("x");
        for _ in 0..steps {
            b = b.step(|_: &mut StepContext<'_>, _: &Value| -> StepResult { Ok(()) });
        }
        b.build().unwrap()
    };
    let err = db.runtime().also_serve("t", saga(1)).start().unwrap_err();
    assert!(err.to_string().contains("is not subscribed"), "{err}");
    let err = db
        .runtime()
        .subscribe("t", saga(2))
        .also_serve("u", saga(1))
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("is subscribed to \"t\""), "{err}");
    let err = db
        .runtime()
        .subscribe("t", saga(2))
        .also_serve("t", saga(2))
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("serves version"), "{err}");
}

fn ve_06_a_run_written_before_any_runtime_is_pinned_at_its_first_claim<E: Engine>() {
    let mut db = TestDb::new("ve_06");
    let client = db.client();
    // Declared ahead of deployment: no runtime has said which version new runs get.
    client.register_handler("orders", "order").unwrap();
    let root = client.launch("orders", &json!({})).unwrap();
    assert_eq!(client.tree(root).unwrap()[0].version, None);
    let s = db.schema.clone();
    let v1 = order_v1::<E>(&s);
    let version = v1.version().to_owned();
    // The schema exists (the client made it): the table is there before the run is claimed.
    effects_table(&mut db);
    let runtime = E::runtime(&db).subscribe("orders", v1).start().unwrap();
    let outcome = runtime.wait_for(root, WAIT).unwrap();
    assert_eq!(outcome.runs()[0].status, RunStatus::Committed);
    assert_eq!(
        runtime.tree(root).unwrap()[0].version.as_deref(),
        Some(version.as_str())
    );
    runtime.shutdown().unwrap();
}

both!(ve_06_a_run_written_before_any_runtime_is_pinned_at_its_first_claim);
