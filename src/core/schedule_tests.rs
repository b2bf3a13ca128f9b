//! Tests of `core::schedule`.
use super::*;

const NET: Duration = Duration::from_secs(30);

fn started(limits: &[usize], workers: usize) -> (Scheduler, Instant) {
    let t0 = Instant::now();
    let mut s = Scheduler::new(limits, workers, NET, Backoff::default(), t0);
    assert_eq!(
        s.next_task(t0),
        Some(Task::Sweep),
        "the first task is a sweep"
    );
    s.on_sweep_done(Some(&[]), t0, 0.5);
    (s, t0)
}

#[test]
fn an_idle_scheduler_only_wakes_for_the_safety_net() {
    let (mut s, t0) = started(&[4, 4], 4);
    assert_eq!(s.next_task(t0), None);
    assert!(s.is_quiescent(t0));
    let deadline = s.next_deadline().unwrap();
    assert_eq!(deadline, t0 + NET);
    assert_eq!(s.next_task(deadline), Some(Task::Sweep));
}

#[test]
fn one_probe_per_handler_then_a_cascade_while_probes_find_work() {
    let (mut s, t0) = started(&[3], 4);
    s.hint(0);
    let first = s.next_task(t0);
    assert_eq!(
        first,
        Some(Task::Claim {
            handler: 0,
            generation: 1
        })
    );
    assert_eq!(s.next_task(t0), None, "only one probe at a time");
    s.on_claimed(0);
    assert!(matches!(
        s.next_task(t0),
        Some(Task::Claim { handler: 0, .. })
    ));
    s.on_claimed(0);
    assert!(matches!(
        s.next_task(t0),
        Some(Task::Claim { handler: 0, .. })
    ));
    s.on_claimed(0);
    assert_eq!(
        s.next_task(t0),
        None,
        "the concurrency limit of 3 is reached"
    );
}

#[test]
fn an_empty_probe_clears_the_hint_unless_a_newer_one_arrived() {
    let (mut s, t0) = started(&[2], 2);
    s.hint(0);
    let Some(Task::Claim { generation, .. }) = s.next_task(t0) else {
        panic!("expected a claim")
    };
    s.hint(0); // arrives while the probe is out
    s.on_finished(
        0,
        false,
        ClaimResult::Empty {
            generation,
            next_wake: None,
        },
        t0,
        0.0,
    );
    let Some(Task::Claim {
        generation: generation2,
        ..
    }) = s.next_task(t0)
    else {
        panic!("the newer hint must be probed")
    };
    assert!(generation2 > generation);
    s.on_finished(
        0,
        false,
        ClaimResult::Empty {
            generation: generation2,
            next_wake: None,
        },
        t0,
        0.0,
    );
    assert_eq!(s.next_task(t0), None);
    assert!(s.is_quiescent(t0));
}

#[test]
fn a_batch_cut_short_rearms_the_hint_a_concurrent_empty_probe_cleared() {
    let (mut s, t0) = started(&[2], 2);
    s.hint(0);
    let Some(Task::Claim { generation, .. }) = s.next_task(t0) else {
        panic!()
    };
    s.on_claimed(0);
    // The cascade sends a second probe; it finds the first worker's run locked.
    let Some(Task::Claim { generation: g2, .. }) = s.next_task(t0) else {
        panic!()
    };
    s.on_finished(
        0,
        false,
        ClaimResult::Empty {
            generation: g2,
            next_wake: None,
        },
        t0,
        0.0,
    );
    assert_eq!(s.next_task(t0), None);
    // The first worker stops after a long step with its run still due.
    s.on_finished(0, true, ClaimResult::Ran, t0, 0.0);
    assert!(
        matches!(s.next_task(t0), Some(Task::Claim { handler: 0, .. })),
        "the handler must be probed again (first probe's generation was {generation})"
    );
}

#[test]
fn timers_from_empty_probes_fire_as_hints() {
    let (mut s, t0) = started(&[1], 1);
    s.hint(0);
    let Some(Task::Claim { generation, .. }) = s.next_task(t0) else {
        panic!()
    };
    let wait = Duration::from_millis(200);
    s.on_finished(
        0,
        false,
        ClaimResult::Empty {
            generation,
            next_wake: Some(wait),
        },
        t0,
        0.0,
    );
    assert_eq!(s.next_deadline(), Some(t0 + wait));
    assert_eq!(s.next_task(t0 + wait / 2), None);
    assert!(matches!(
        s.next_task(t0 + wait),
        Some(Task::Claim { handler: 0, .. })
    ));
}

#[test]
fn sweeps_hint_due_handlers_and_arm_timers() {
    let (mut s, t0) = started(&[1, 1, 1], 3);
    s.request_sweep();
    assert_eq!(s.next_task(t0), Some(Task::Sweep));
    let wait = Duration::from_secs(2);
    s.on_sweep_done(
        Some(&[SweepEntry::Due(1), SweepEntry::Wait(2, wait)]),
        t0,
        0.0,
    );
    assert!(matches!(
        s.next_task(t0),
        Some(Task::Claim { handler: 1, .. })
    ));
    assert_eq!(s.next_task(t0), None);
    assert!(matches!(
        s.next_task(t0 + wait),
        Some(Task::Claim { handler: 2, .. })
    ));
}

#[test]
fn failures_back_off_exponentially_and_keep_the_hint() {
    let (mut s, t0) = started(&[1], 1);
    s.hint(0);
    assert!(s.next_task(t0).is_some());
    s.on_finished(0, false, ClaimResult::Failed, t0, 1.0);
    assert_eq!(s.next_task(t0), None, "backing off");
    let b = Backoff::default();
    let retry = s.next_deadline().unwrap();
    assert_eq!(retry, t0 + b.base);
    assert!(s.next_task(retry).is_some());
    assert_eq!(b.delay(2, 1.0), b.base * 2);
    assert_eq!(b.delay(30, 1.0), b.max);
    assert_eq!(b.delay(1, 0.0), b.base / 2);
}

/// The lost retry: a worker's claimed run fails on an infrastructure error while the probe
/// the cascade sent after its claim is still out; that probe found the run locked and reports
/// "empty" after the failure. The handler must still be retried when the backoff ends.
#[test]
fn an_empty_probe_reported_after_a_failure_does_not_lose_the_retry() {
    let (mut s, t0) = started(&[2], 2);
    s.hint(0);
    assert!(s.next_task(t0).is_some());
    s.on_claimed(0);
    let Some(Task::Claim { generation: g2, .. }) = s.next_task(t0) else {
        panic!("the cascade sends a second probe")
    };
    s.on_finished(0, true, ClaimResult::Failed, t0, 1.0);
    s.on_finished(
        0,
        false,
        ClaimResult::Empty {
            generation: g2,
            next_wake: None,
        },
        t0,
        1.0,
    );
    assert_eq!(s.next_task(t0), None, "backing off");
    let retry = s.next_deadline().expect("the retry is scheduled");
    assert_eq!(retry, t0 + Backoff::default().base);
    assert!(
        matches!(s.next_task(retry), Some(Task::Claim { handler: 0, .. })),
        "the failed run's handler is probed again when the backoff ends"
    );
}

#[test]
fn handlers_are_served_round_robin() {
    let (mut s, t0) = started(&[1, 1], 1);
    s.hint(0);
    s.hint(1);
    let mut order = Vec::new();
    for _ in 0..4 {
        let Some(Task::Claim { handler, .. }) = s.next_task(t0) else {
            panic!()
        };
        order.push(handler);
        s.on_claimed(handler);
        s.on_finished(handler, true, ClaimResult::Ran, t0, 0.0);
    }
    assert_eq!(order, vec![0, 1, 0, 1]);
}

#[test]
fn shutting_down_stops_new_tasks_and_waits_for_running_ones() {
    let (mut s, t0) = started(&[2], 2);
    s.hint(0);
    assert!(s.next_task(t0).is_some());
    s.on_claimed(0);
    s.shut_down();
    assert_eq!(s.next_task(t0), None);
    assert!(!s.is_drained());
    s.on_finished(0, true, ClaimResult::Ran, t0, 0.0);
    assert!(s.is_drained());
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn a_failed_sweep_is_retried_soon() {
    let t0 = Instant::now();
    let mut s = Scheduler::new(&[1], 1, NET, Backoff::default(), t0);
    assert_eq!(s.next_task(t0), Some(Task::Sweep));
    s.on_sweep_done(None, t0, 1.0);
    assert_eq!(s.next_deadline(), Some(t0 + Backoff::default().base));
}

#[test]
fn jitter_stays_in_the_unit_interval_and_depends_on_its_seed() {
    let mut a = Jitter::new(42);
    let mut b = Jitter::new(42);
    let mut c = Jitter::new(1_000);
    let xs: Vec<f64> = (0..1000).map(|_| a.next()).collect();
    assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    assert_eq!(xs[..10], (0..10).map(|_| b.next()).collect::<Vec<_>>()[..]);
    assert_ne!(xs[0], c.next());
    // A zero seed does not get stuck at zero.
    let mut z = Jitter::new(0);
    assert!((0..10).map(|_| z.next()).any(|x| x > 0.0));
}
