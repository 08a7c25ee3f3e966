//! The plan's rules, one test each, on a fake clock: `t(s)` is `s` seconds after a
//! fixed instant (a whole hour, so minutely crons fall on whole minutes of it).

use super::*;
use chrono::TimeDelta;

fn t(seconds: i64) -> DateTime<Utc> {
    // 1 800 000 000 s after the epoch is a whole hour (500 000 h).
    DateTime::from_timestamp(1_800_000_000, 0).unwrap() + TimeDelta::seconds(seconds)
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn every(seconds: i64, catch_up: CatchUp) -> Setting {
    Setting::Active {
        timetable: Timetable::every_seconds(seconds).unwrap(),
        catch_up,
    }
}

fn cron(expr: &str, zone: Option<&str>) -> Setting {
    Setting::Active {
        timetable: Timetable::cron(expr, zone).unwrap(),
        catch_up: CatchUp::One,
    }
}

fn wait(n: u128, next: DateTime<Utc>, missed: u64) -> Option<Decision> {
    Some(Decision::Wait {
        schedule_id: id(n),
        next: Some(next),
        missed,
    })
}

fn fire(n: u128, due: DateTime<Utc>, next: DateTime<Utc>, missed: u64) -> Decision {
    Decision::Fire {
        schedule_id: id(n),
        due,
        next: Some(next),
        missed,
    }
}

#[test]
fn a_new_interval_schedule_is_due_one_interval_later_then_on_its_cadence() {
    let mut plan = SchedulePlan::new();
    assert_eq!(
        plan.set(id(1), every(60, CatchUp::One), None, t(0)),
        wait(1, t(60), 0)
    );
    assert_eq!(plan.next_wake(), Some(t(60)));
    assert!(plan.poll(t(59)).is_empty());
    // Polled a little late: the cadence follows the due time, not the poll.
    assert_eq!(plan.poll(t(61)), vec![fire(1, t(60), t(120), 0)]);
    assert_eq!(plan.next_wake(), Some(t(120)));
    assert_eq!(plan.poll(t(120)), vec![fire(1, t(120), t(180), 0)]);
}

#[test]
fn one_timer_structure_orders_every_schedule() {
    let mut plan = SchedulePlan::new();
    plan.set(id(1), every(30, CatchUp::One), None, t(0));
    plan.set(id(2), every(10, CatchUp::One), None, t(0));
    plan.set(id(3), cron("* * * * *", None), None, t(0));
    assert_eq!(plan.next_wake(), Some(t(10)));
    assert_eq!(
        plan.poll(t(30)).len(),
        2,
        "2 is due at 10 (late) and 1 at 30"
    );
    assert_eq!(plan.next_wake(), Some(t(40)));
    let fired = plan.poll(t(60));
    let mut ids: Vec<Uuid> = fired
        .iter()
        .map(|d| match d {
            Decision::Fire { schedule_id, .. } => *schedule_id,
            other => panic!("{other:?}"),
        })
        .collect();
    ids.sort();
    assert_eq!(ids, vec![id(1), id(2), id(3)]);
}

#[test]
fn a_late_poll_fires_once_for_the_latest_due_time_and_counts_the_others_missed() {
    let mut plan = SchedulePlan::new();
    plan.set(id(1), every(10, CatchUp::None), None, t(0));
    assert_eq!(plan.poll(t(45)), vec![fire(1, t(40), t(50), 3)]);
}

#[test]
fn after_downtime_catch_up_one_makes_one_run_for_all_missed_times() {
    let mut plan = SchedulePlan::new();
    // Saved next_run_at t(100), the manager back at t(135): 100, 110, 120, 130.
    assert_eq!(
        plan.set(id(1), every(10, CatchUp::One), Some(t(100)), t(135)),
        Some(fire(1, t(130), t(140), 3))
    );
    assert_eq!(plan.next_wake(), Some(t(140)));
    // Killed exactly at a due moment and back 2 s later: that due time's run.
    let mut plan = SchedulePlan::new();
    assert_eq!(
        plan.set(id(1), every(10, CatchUp::One), Some(t(100)), t(102)),
        Some(fire(1, t(100), t(110), 0))
    );
}

#[test]
fn after_downtime_catch_up_none_makes_no_run_and_counts_every_missed_time() {
    let mut plan = SchedulePlan::new();
    assert_eq!(
        plan.set(id(1), every(10, CatchUp::None), Some(t(100)), t(135)),
        wait(1, t(140), 4)
    );
    assert!(plan.poll(t(139)).is_empty());
}

#[test]
fn a_saved_due_time_ahead_is_kept_when_it_belongs_to_the_timetable() {
    let mut plan = SchedulePlan::new();
    assert_eq!(
        plan.set(id(1), every(60, CatchUp::One), Some(t(30)), t(0)),
        wait(1, t(30), 0)
    );
    // More than an interval ahead: the interval was shortened while no manager ran.
    let mut plan = SchedulePlan::new();
    assert_eq!(
        plan.set(id(1), every(60, CatchUp::One), Some(t(600)), t(0)),
        wait(1, t(60), 0)
    );
    // Not a match of the cron: the cron was changed.
    let mut plan = SchedulePlan::new();
    assert_eq!(
        plan.set(id(1), cron("0 * * * *", None), Some(t(90)), t(0)),
        wait(1, t(3600), 0)
    );
}

#[test]
fn a_changed_timetable_takes_effect_at_once_and_other_changes_leave_the_plan() {
    let mut plan = SchedulePlan::new();
    plan.set(id(1), every(3600, CatchUp::One), None, t(0));
    assert_eq!(
        plan.set(id(1), every(3600, CatchUp::None), None, t(5)),
        None
    );
    assert_eq!(plan.next_wake(), Some(t(3600)));
    assert_eq!(
        plan.set(id(1), every(10, CatchUp::None), Some(t(3600)), t(5)),
        wait(1, t(15), 0)
    );
    assert_eq!(plan.next_wake(), Some(t(15)));
}

#[test]
fn disabled_and_unworkable_schedules_have_no_timer_and_say_why() {
    let mut plan = SchedulePlan::new();
    plan.set(id(1), every(10, CatchUp::One), None, t(0));
    assert_eq!(
        plan.set(id(1), Setting::Disabled, Some(t(10)), t(1)),
        Some(Decision::Idle {
            schedule_id: id(1),
            error: None
        })
    );
    assert_eq!(plan.next_wake(), None);
    assert!(plan.poll(t(100)).is_empty());
    // Enabled again: from now, with nothing missed while it was disabled.
    assert_eq!(
        plan.set(id(1), every(10, CatchUp::One), None, t(100)),
        wait(1, t(110), 0)
    );
    let why = "cron '61 * * * *': the minute field '61' does not parse".to_string();
    assert_eq!(
        plan.set(id(2), Setting::Invalid(why.clone()), None, t(100)),
        Some(Decision::Idle {
            schedule_id: id(2),
            error: Some(why.clone())
        })
    );
    assert_eq!(plan.set(id(2), Setting::Invalid(why), None, t(101)), None);
    plan.remove(id(1));
    assert_eq!(plan.next_wake(), None);
    assert_eq!(plan.ids().collect::<Vec<_>>(), vec![id(2)]);
}

#[test]
fn cron_schedules_follow_their_time_zone_and_catch_up_over_missed_matches() {
    let mut plan = SchedulePlan::new();
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    // An evening screener at 18:30 New York time on weekdays; the manager was down
    // from Friday afternoon to Tuesday noon (UTC): Friday, Monday missed.
    assert_eq!(
        plan.set(
            id(1),
            cron("30 18 * * 1-5", Some("America/New_York")),
            Some(at("2026-01-02T23:30:00Z")),
            at("2026-01-06T12:00:00Z"),
        ),
        Some(fire(
            1,
            at("2026-01-05T23:30:00Z"),
            at("2026-01-06T23:30:00Z"),
            1
        ))
    );
}
