//! The plan's rules, one test each, on a fake clock: `t(s)` is `s` seconds after a
//! fixed instant.

use super::*;

fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap() + TimeDelta::seconds(seconds)
}

fn ms(milliseconds: i64) -> TimeDelta {
    TimeDelta::milliseconds(milliseconds)
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn every(interval_s: i64) -> Schedule {
    Schedule::from_seconds(interval_s, 30).unwrap()
}

/// The strategies `poll` started, in order.
fn started(decisions: &[Decision]) -> Vec<Uuid> {
    decisions
        .iter()
        .filter_map(|decision| match decision {
            Decision::Start(start) => Some(start.strategy_id),
            _ => None,
        })
        .collect()
}

fn plan_with(max_concurrent: usize, strategies: &[(u128, i64)]) -> ExecutionPlan {
    let mut plan = ExecutionPlan::new(max_concurrent);
    for &(n, interval_s) in strategies {
        assert_eq!(
            plan.add(id(n), every(interval_s), ExecutionStats::default(), t(0)),
            None
        );
    }
    plan
}

#[test]
fn schedules_out_of_range_are_refused_naming_the_column() {
    let err = Schedule::from_seconds(0, 30).unwrap_err();
    assert_eq!(
        err.to_string(),
        "execution_interval_s 0 is out of range; allowed: a whole number of seconds, at least 1"
    );
    assert_eq!(
        Schedule::from_seconds(60, -1).unwrap_err().column,
        "max_execution_s"
    );
    assert_eq!(DEFAULT_MAX_EXECUTION, TimeDelta::seconds(30));
}

#[test]
fn a_new_strategy_is_due_one_interval_later_then_every_interval() {
    let mut plan = plan_with(5, &[(1, 60)]);
    assert_eq!(plan.stats(id(1)).unwrap().next_execution_at, Some(t(60)));
    assert_eq!(plan.next_wake(), Some(t(60)));
    assert!(plan.poll(t(59)).is_empty());
    let decisions = plan.poll(t(60));
    assert_eq!(
        decisions,
        [Decision::Start(Start {
            strategy_id: id(1),
            trigger: Trigger::Schedule,
            started_at: t(60),
            due_at: Some(t(60)),
            commands: vec![],
        })]
    );
    assert_eq!(plan.stats(id(1)).unwrap().next_execution_at, Some(t(120)));
    // Ended late: the cadence stays on the due times, not on the ends.
    plan.finished(id(1), t(70), Ok(())).unwrap();
    assert_eq!(plan.next_wake(), Some(t(120)));
    assert_eq!(started(&plan.poll(t(120))), [id(1)]);
}

#[test]
fn outcomes_update_the_statistics() {
    let mut plan = plan_with(5, &[(1, 10)]);
    plan.poll(t(10));
    let finished = plan.finished(id(1), t(10) + ms(300), Ok(())).unwrap();
    assert_eq!(
        finished,
        Finished {
            commands: vec![],
            counted: true
        }
    );
    plan.poll(t(20));
    plan.finished(
        id(1),
        t(20) + ms(100),
        Err("no price for BTC-USD yet".into()),
    );
    let stats = plan.stats(id(1)).unwrap();
    assert_eq!(stats.execution_count, 2);
    assert_eq!(stats.successful_executions, 1);
    assert_eq!(stats.failed_executions, 1);
    assert_eq!(stats.skipped_executions, 0);
    assert_eq!(stats.last_execution_at, Some(t(20)));
    assert_eq!(stats.last_execution_duration_ms, Some(100));
    assert_eq!(stats.avg_execution_ms, Some(200.0));
    assert_eq!(
        stats.last_execution_error.as_deref(),
        Some("no price for BTC-USD yet")
    );
    plan.poll(t(30));
    plan.finished(id(1), t(30) + ms(500), Ok(()));
    let stats = plan.stats(id(1)).unwrap();
    assert_eq!(
        stats.last_execution_error, None,
        "the last execution's error"
    );
    assert_eq!(stats.avg_execution_ms, Some(300.0));
    assert_eq!(plan.finished(id(1), t(31), Ok(())), None, "nothing running");
}

#[test]
fn at_most_max_concurrent_run_and_the_rest_wait_in_order() {
    let mut plan = plan_with(2, &[(1, 60), (2, 60), (3, 60)]);
    assert_eq!(started(&plan.poll(t(60))), [id(1), id(2)]);
    assert_eq!(plan.running_count(), 2);
    assert!(
        started(&plan.poll(t(61))).is_empty(),
        "id 3 waits for a slot"
    );
    plan.finished(id(2), t(62), Ok(()));
    assert_eq!(started(&plan.poll(t(62))), [id(3)]);
    assert_eq!(plan.stats(id(3)).unwrap().skipped_executions, 0);
}

#[test]
fn one_still_waiting_at_its_next_due_time_is_skipped_never_run_twice() {
    let mut plan = plan_with(1, &[(1, 100)]);
    let slow = Schedule::from_seconds(1000, 600).unwrap();
    plan.add(id(2), slow, ExecutionStats::default(), t(0));
    plan.trigger(id(2), id(99)).unwrap();
    assert_eq!(
        started(&plan.poll(t(0))),
        [id(2)],
        "a long execution holds the slot"
    );
    assert!(started(&plan.poll(t(100))).is_empty(), "id 1 due, waiting");
    let decisions = plan.poll(t(200));
    assert_eq!(
        decisions,
        [Decision::Skipped {
            strategy_id: id(1),
            count: 1,
            due_at: t(100)
        }]
    );
    assert_eq!(plan.stats(id(1)).unwrap().skipped_executions, 1);
    assert_eq!(plan.stats(id(1)).unwrap().next_execution_at, Some(t(300)));
    plan.finished(id(2), t(250), Ok(()));
    assert_eq!(
        started(&plan.poll(t(250))),
        [id(1)],
        "one execution for both"
    );
    plan.finished(id(1), t(251), Ok(()));
    assert!(started(&plan.poll(t(299))).is_empty());
    assert_eq!(plan.stats(id(1)).unwrap().execution_count, 1);
}

#[test]
fn a_strategy_runs_one_execution_at_a_time() {
    let mut plan = plan_with(5, &[(1, 10)]);
    assert_eq!(started(&plan.poll(t(10))), [id(1)]);
    assert!(
        started(&plan.poll(t(20))).is_empty(),
        "still executing: it waits"
    );
    let decisions = plan.poll(t(30));
    assert_eq!(
        decisions,
        [Decision::Skipped {
            strategy_id: id(1),
            count: 1,
            due_at: t(20)
        }]
    );
    plan.finished(id(1), t(35), Ok(()));
    assert_eq!(started(&plan.poll(t(35))), [id(1)], "the one for 30");
}

#[test]
fn a_late_poll_runs_the_latest_due_time_and_skips_the_others() {
    let mut plan = plan_with(5, &[(1, 10)]);
    let decisions = plan.poll(t(45));
    assert_eq!(
        decisions[0],
        Decision::Skipped {
            strategy_id: id(1),
            count: 3,
            due_at: t(30)
        }
    );
    assert_eq!(started(&decisions), [id(1)]);
    let stats = plan.stats(id(1)).unwrap();
    assert_eq!(stats.skipped_executions, 3);
    assert_eq!(stats.next_execution_at, Some(t(50)), "on the old cadence");
}

#[test]
fn triggers_run_now_join_a_waiting_execution_and_answer_their_commands() {
    let mut plan = plan_with(1, &[(1, 20), (2, 3600)]);
    assert_eq!(plan.trigger(id(3), id(100)), Err(NotPlanned(id(3))));
    plan.trigger(id(1), id(100)).unwrap();
    let decisions = plan.poll(t(5));
    assert_eq!(
        decisions,
        [Decision::Start(Start {
            strategy_id: id(1),
            trigger: Trigger::Manual,
            started_at: t(5),
            due_at: None,
            commands: vec![id(100)],
        })]
    );
    // While it runs: a second trigger waits for it; a due time joins the trigger.
    plan.trigger(id(1), id(101)).unwrap();
    plan.trigger(id(1), id(102)).unwrap();
    assert!(started(&plan.poll(t(20))).is_empty());
    let finished = plan.finished(id(1), t(21), Err("boom".into())).unwrap();
    assert_eq!(finished.commands, [id(100)]);
    let decisions = plan.poll(t(21));
    let Decision::Start(start) = &decisions[0] else {
        panic!("{decisions:?}")
    };
    assert_eq!(
        (start.trigger, start.commands.clone()),
        (Trigger::Manual, vec![id(101), id(102)])
    );
    assert_eq!(plan.stats(id(1)).unwrap().skipped_executions, 0);
    // Removing answers nothing but returns the commands to fail.
    let (stats, commands) = plan.remove(id(1)).unwrap();
    assert_eq!(commands, [id(101), id(102)]);
    assert_eq!(stats.failed_executions, 1);
    assert_eq!(plan.running_count(), 0);
    assert_eq!(plan.trigger(id(1), id(103)), Err(NotPlanned(id(1))));
}

#[test]
fn past_max_execution_it_fails_and_five_seconds_later_it_is_killed() {
    let mut plan = ExecutionPlan::new(5);
    let schedule = Schedule::from_seconds(600, 30).unwrap();
    plan.add(id(1), schedule, ExecutionStats::default(), t(0));
    plan.trigger(id(1), id(100)).unwrap();
    plan.poll(t(0));
    assert_eq!(plan.next_wake(), Some(t(30)));
    assert!(plan.poll(t(29)).is_empty());
    let decisions = plan.poll(t(30));
    assert_eq!(
        decisions,
        [Decision::TimedOut {
            strategy_id: id(1),
            commands: vec![id(100)],
            error: "timed out: still running after max_execution_s (30s)".into(),
        }]
    );
    let stats = plan.stats(id(1)).unwrap();
    assert_eq!((stats.execution_count, stats.failed_executions), (1, 1));
    assert_eq!(stats.last_execution_duration_ms, Some(30_000));
    assert_eq!(plan.running_count(), 1, "it still holds its slot");
    assert_eq!(plan.next_wake(), Some(t(35)));
    assert!(plan.poll(t(34)).is_empty());
    assert_eq!(
        plan.poll(t(35)),
        [Decision::KillAndRestart { strategy_id: id(1) }]
    );
    assert!(plan.poll(t(36)).is_empty(), "decided once");
    assert_eq!(plan.next_wake(), Some(t(600)));
    let finished = plan
        .finished(
            id(1),
            t(37),
            Err("the executor exited during the execution".into()),
        )
        .unwrap();
    assert_eq!(
        finished,
        Finished {
            commands: vec![],
            counted: false
        }
    );
    assert_eq!(
        plan.stats(id(1)).unwrap().execution_count,
        1,
        "counted once"
    );
    assert_eq!(plan.running_count(), 0);
}

#[test]
fn an_execution_that_ends_within_the_grace_is_counted_once_and_never_killed() {
    let mut plan = plan_with(5, &[(1, 600)]);
    plan.trigger(id(1), id(100)).unwrap();
    plan.poll(t(0));
    plan.poll(t(31));
    let finished = plan.finished(id(1), t(33), Ok(())).unwrap();
    assert!(!finished.counted);
    assert!(plan.poll(t(40)).is_empty());
    let stats = plan.stats(id(1)).unwrap();
    assert_eq!(
        (stats.successful_executions, stats.failed_executions),
        (0, 1)
    );
}

#[test]
fn after_a_restart_missed_executions_are_skipped_and_the_next_is_on_the_cadence() {
    let mut plan = ExecutionPlan::new(5);
    // Due at 0, 60, …: the manager was down from before 0 until 250.
    let saved = ExecutionStats {
        next_execution_at: Some(t(0)),
        last_execution_at: Some(t(-60)),
        execution_count: 7,
        skipped_executions: 2,
        ..ExecutionStats::default()
    };
    let skipped = plan.add(id(1), every(60), saved, t(250));
    assert_eq!(
        skipped,
        Some(Decision::Skipped {
            strategy_id: id(1),
            count: 5,
            due_at: t(240)
        })
    );
    let stats = plan.stats(id(1)).unwrap();
    assert_eq!(stats.skipped_executions, 7);
    assert_eq!(stats.execution_count, 7);
    assert_eq!(stats.next_execution_at, Some(t(300)));
    assert!(plan.poll(t(299)).is_empty(), "not all at once, not at once");
    assert_eq!(started(&plan.poll(t(300))), [id(1)]);
}

#[test]
fn a_restart_rule_for_every_saved_state() {
    let restart = |saved: ExecutionStats, now: i64| {
        let mut plan = ExecutionPlan::new(5);
        let skipped = plan.add(id(1), every(60), saved, t(now));
        let stats = plan.stats(id(1)).unwrap().clone();
        (
            skipped.is_some(),
            stats.skipped_executions,
            stats.next_execution_at,
        )
    };
    let next = |s: i64| ExecutionStats {
        next_execution_at: Some(t(s)),
        ..ExecutionStats::default()
    };
    // Down for less than the wait: the saved due time stands.
    assert_eq!(restart(next(100), 50), (false, 0, Some(t(100))));
    // Exactly due now: it runs now, nothing missed.
    assert_eq!(restart(next(100), 100), (false, 0, Some(t(100))));
    // Only the last execution saved: due one interval after it.
    let last = ExecutionStats {
        last_execution_at: Some(t(0)),
        ..ExecutionStats::default()
    };
    assert_eq!(restart(last, 130), (true, 2, Some(t(180))));
    // Nothing saved: a new strategy.
    assert_eq!(
        restart(ExecutionStats::default(), 10),
        (false, 0, Some(t(70)))
    );
    // A saved due time more than an interval ahead is brought to one interval.
    assert_eq!(restart(next(1000), 10), (false, 0, Some(t(70))));
}

#[test]
fn a_shorter_interval_brings_the_next_due_time_forward() {
    let mut plan = plan_with(5, &[(1, 3600)]);
    assert!(plan.set_schedule(id(1), every(60), t(10)));
    assert_eq!(plan.stats(id(1)).unwrap().next_execution_at, Some(t(70)));
    assert_eq!(plan.next_wake(), Some(t(70)));
    assert!(plan.set_schedule(id(1), every(7200), t(20)));
    assert_eq!(
        plan.next_wake(),
        Some(t(70)),
        "a longer one waits for the next"
    );
    assert!(!plan.set_schedule(id(2), every(60), t(20)));
}

#[test]
fn changed_statistics_are_handed_out_once() {
    let mut plan = plan_with(5, &[(1, 10), (2, 10)]);
    let changed: Vec<Uuid> = plan.take_changed().into_iter().map(|(id, _)| id).collect();
    assert_eq!(changed, [id(1), id(2)]);
    assert!(plan.take_changed().is_empty());
    plan.poll(t(10));
    plan.finished(id(2), t(11), Ok(()));
    let changed = plan.take_changed();
    assert_eq!(changed.len(), 2, "both got a new next_execution_at");
    assert_eq!(changed[1].1.execution_count, 1);
    plan.remove(id(1));
    plan.finished(id(1), t(12), Ok(()));
    assert!(plan.take_changed().is_empty());
}

#[test]
fn a_strategy_started_afresh_is_first_due_on_its_phase_within_one_interval() {
    let interval = TimeDelta::seconds(60);
    for n in 0..200u128 {
        let strategy = Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n);
        let phase = i64::try_from(phase_ms(strategy) % 60_000).unwrap();
        for now in [
            t(0),
            t(0) + ms(1),
            t(17) + ms(999),
            t(59),
            t(3600) + ms(phase),
        ] {
            let due = first_due(strategy, interval, now);
            assert!(
                due > now && due <= now + interval,
                "{strategy}: {due} for {now}"
            );
            assert_eq!(
                due.timestamp_millis().rem_euclid(60_000),
                phase,
                "{strategy}: always on its phase"
            );
        }
    }
    // The hash is fixed: the same phase on every manager and every version.
    assert_eq!(phase_ms(Uuid::nil()), 0x6875_2350_ae1d_483f);
    assert_eq!(phase_ms(id(1)), 0x1af7_b85a_5eef_58e4);
}

/// 1 000 strategies at 1 s started at the same instant: their first due times are
/// spread over the second (no millisecond holds more than a handful), and the due
/// times after them stay spread.
#[test]
fn a_thousand_strategies_started_together_are_spread_over_their_interval() {
    let interval = every(1);
    let now = t(0) + ms(437);
    let mut plan = ExecutionPlan::new(1000);
    // Ids as an operator might make them (sequential) and as the database does.
    let ids: Vec<Uuid> = (1..=500u128)
        .map(id)
        .chain((0..500).map(|_| Uuid::new_v4()))
        .collect();
    for &strategy in &ids {
        let stats = ExecutionStats {
            next_execution_at: Some(first_due(strategy, interval.interval(), now)),
            ..ExecutionStats::default()
        };
        assert_eq!(plan.add(strategy, interval, stats, now), None);
    }
    let spread = |dues: &[DateTime<Utc>]| {
        let mut per_ms: HashMap<i64, usize> = HashMap::new();
        let mut per_tenth = [0usize; 10];
        for due in dues {
            *per_ms.entry(due.timestamp_millis()).or_default() += 1;
            per_tenth[usize::try_from(due.timestamp_subsec_millis() / 100).unwrap()] += 1;
        }
        (
            per_ms.values().copied().max().unwrap(),
            per_ms.len(),
            per_tenth,
        )
    };
    // Poll every millisecond for three seconds; every execution ends at once.
    let mut rounds: Vec<Vec<DateTime<Utc>>> = vec![Vec::new(); 3];
    let mut clock = now;
    while clock < now + TimeDelta::seconds(3) {
        clock += ms(1);
        for decision in plan.poll(clock) {
            let Decision::Start(start) = decision else {
                panic!("only starts expected: {decision:?}");
            };
            let due = start
                .due_at
                .expect("a scheduled execution has its due time");
            assert_eq!(start.started_at - due, TimeDelta::zero(), "polled on time");
            let round = usize::try_from((due - now - ms(1)).num_seconds()).unwrap();
            rounds[round].push(due);
            plan.finished(start.strategy_id, clock, Ok(())).unwrap();
        }
    }
    for (round, dues) in rounds.iter().enumerate() {
        assert_eq!(dues.len(), 1000, "round {round}: every strategy once");
        let (busiest_ms, distinct_ms, per_tenth) = spread(dues);
        assert!(busiest_ms <= 8, "round {round}: {busiest_ms} due in one ms");
        assert!(
            distinct_ms >= 550,
            "round {round}: {distinct_ms} distinct ms"
        );
        assert!(
            per_tenth.iter().all(|&n| (50..=150).contains(&n)),
            "round {round}: per 100 ms {per_tenth:?}"
        );
    }
    let skipped: u64 = ids
        .iter()
        .map(|id| plan.stats(*id).unwrap().skipped_executions)
        .sum();
    assert_eq!(skipped, 0);
}
