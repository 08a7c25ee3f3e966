//! [`SchedulePlan`]: when each schedule of runs is due, decided without I/O.
//!
//! The shell passes the time in every call, carries out the [`Decision`]s (a run
//! made through `engine_store::schedules::fire`, the statistics written), and
//! sleeps until [`SchedulePlan::next_wake`] or the next notification. One structure
//! for every schedule: a `BTreeSet` of (next due time, schedule), not a sleep per
//! schedule.
//!
//! # Rules
//! - **First due time.** A schedule seen for the first time with no saved
//!   `next_run_at`, or changed (timetable or `enabled`) while the manager runs, is
//!   next due at its timetable's first due time after `now`: a cron's next match, or
//!   one interval from `now`. Then every due time follows the previous *due time*
//!   (not the run), so the cadence does not drift.
//! - **Late.** A poll that comes after several due times fires one run, for the
//!   latest; the earlier ones count in `missed`.
//! - **After downtime** (a schedule seen for the first time with a saved
//!   `next_run_at` in the past, i.e. at the manager's start): the `k` due times from
//!   the saved one up to `now` were not served. `catch_up` `one`: one run now, for
//!   the latest of them, and `k - 1` missed; `none`: no run, `k` missed. Either way
//!   the schedule is next due at its first due time after `now`, on its cadence.
//!   A manager killed at a due moment is downtime like any other: with `one` the
//!   due time gets its run (exactly one: the database's unique key), with `none` it
//!   is missed.
//! - **A saved due time ahead** is kept when it is one of the timetable's own (a
//!   cron match, or at most one interval away); otherwise the timetable changed
//!   while no manager watched, and the next due time is computed from `now`.
//! - **Disabled or unworkable** (a cron that does not parse, an unknown time zone):
//!   no timer, no run; [`Decision::Idle`] says why, for `last_error`.
//! - Changes that do not touch the timetable or `enabled` (mode, parameters,
//!   `overlap`, …) leave the plan as it is: a run is made from the row as it is at
//!   its due time.

use chrono::{DateTime, Utc};
use engine_protocol::schedule::Timetable;
use engine_store::CatchUp;
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

/// How many due times are counted one by one after downtime (a minutely cron down
/// for 70 days); beyond it the count stops there and the latest is found directly.
pub const MAX_COUNTED: u64 = 100_000;

/// What a schedule's row says about its timing.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    Active {
        timetable: Timetable,
        catch_up: CatchUp,
    },
    Disabled,
    /// It cannot work; why, naming what is at fault.
    Invalid(String),
}

/// What the shell does for a schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Make a run for `due` (the `overlap` rule applies), then wait for `next`;
    /// `missed` earlier due times get no run.
    Fire {
        schedule_id: Uuid,
        due: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        missed: u64,
    },
    /// No run now: wait for `next`; `missed` due times passed unserved.
    Wait {
        schedule_id: Uuid,
        next: Option<DateTime<Utc>>,
        missed: u64,
    },
    /// No timer: disabled (`error` `None`) or it cannot work (`error` says why).
    Idle {
        schedule_id: Uuid,
        error: Option<String>,
    },
}

struct Entry {
    setting: Setting,
    due: Option<DateTime<Utc>>,
}

/// Every schedule's next due time; see the module documentation.
#[derive(Default)]
pub struct SchedulePlan {
    entries: HashMap<Uuid, Entry>,
    timers: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl SchedulePlan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take a schedule's row as it is now (`saved`: its stored `next_run_at`).
    /// `None` when nothing changes for it.
    pub fn set(
        &mut self,
        id: Uuid,
        setting: Setting,
        saved: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<Decision> {
        let known = self.entries.get(&id).map(|e| &e.setting);
        if let (
            Some(Setting::Active { timetable: old, .. }),
            Setting::Active {
                timetable: new,
                catch_up,
            },
        ) = (known, &setting)
        {
            if old == new {
                let catch_up = *catch_up;
                if let Some(Entry {
                    setting: Setting::Active { catch_up: c, .. },
                    ..
                }) = self.entries.get_mut(&id)
                {
                    *c = catch_up;
                }
                return None;
            }
        }
        if known == Some(&setting) {
            return None;
        }
        let first_sight = known.is_none();
        self.unschedule(id);
        let decision = match &setting {
            Setting::Disabled => Decision::Idle {
                schedule_id: id,
                error: None,
            },
            Setting::Invalid(why) => Decision::Idle {
                schedule_id: id,
                error: Some(why.clone()),
            },
            Setting::Active {
                timetable,
                catch_up,
            } => match saved.filter(|_| first_sight) {
                Some(saved) if saved <= now => catch_up_from(id, timetable, *catch_up, saved, now),
                Some(saved) if keeps(timetable, saved, now) => Decision::Wait {
                    schedule_id: id,
                    next: Some(saved),
                    missed: 0,
                },
                _ => Decision::Wait {
                    schedule_id: id,
                    next: timetable.next_after(now),
                    missed: 0,
                },
            },
        };
        let due = match &decision {
            Decision::Fire { next, .. } | Decision::Wait { next, .. } => *next,
            Decision::Idle { .. } => None,
        };
        if let Some(due) = due {
            self.timers.insert((due, id));
        }
        self.entries.insert(id, Entry { setting, due });
        Some(decision)
    }

    /// Forget a deleted schedule.
    pub fn remove(&mut self, id: Uuid) {
        self.unschedule(id);
        self.entries.remove(&id);
    }

    fn unschedule(&mut self, id: Uuid) {
        if let Some(due) = self.entries.get_mut(&id).and_then(|e| e.due.take()) {
            self.timers.remove(&(due, id));
        }
    }

    /// The schedules the plan knows.
    pub fn ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.entries.keys().copied()
    }

    /// When the next schedule is due.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.timers.first().map(|(due, _)| *due)
    }

    /// The schedules due at `now`: one [`Decision::Fire`] each, for its latest due
    /// time not after `now`.
    pub fn poll(&mut self, now: DateTime<Utc>) -> Vec<Decision> {
        let mut decisions = Vec::new();
        while let Some(&(due, id)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            let Setting::Active { timetable, .. } = &entry.setting else {
                entry.due = None;
                continue;
            };
            let (count, latest) = passed(timetable, due, now);
            let next = timetable.next_after(latest);
            entry.due = next;
            if let Some(next) = next {
                self.timers.insert((next, id));
            }
            decisions.push(Decision::Fire {
                schedule_id: id,
                due: latest,
                next,
                missed: count - 1,
            });
        }
        decisions
    }
}

/// A schedule seen for the first time whose saved due time has passed.
fn catch_up_from(
    id: Uuid,
    timetable: &Timetable,
    catch_up: CatchUp,
    saved: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Decision {
    // A saved time that is not one of this timetable's (it changed while no manager
    // watched) counts from the timetable's first due time after it.
    let first = if timetable.is_due_time(saved) {
        Some(saved)
    } else {
        timetable.next_after(saved).filter(|t| *t <= now)
    };
    let Some(first) = first else {
        return Decision::Wait {
            schedule_id: id,
            next: timetable.next_after(now),
            missed: 0,
        };
    };
    let (count, latest) = passed(timetable, first, now);
    let next = timetable.next_after(latest);
    match catch_up {
        CatchUp::One => Decision::Fire {
            schedule_id: id,
            due: latest,
            next,
            missed: count - 1,
        },
        CatchUp::None => Decision::Wait {
            schedule_id: id,
            next,
            missed: count,
        },
    }
}

/// Whether a saved due time ahead of `now` belongs to the timetable.
fn keeps(timetable: &Timetable, saved: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    match timetable {
        Timetable::Every(interval) => saved <= now + *interval,
        Timetable::Cron { .. } => timetable.is_due_time(saved),
    }
}

/// The due times from `first` (one, `first <= now`) up to `now`: how many, and
/// the latest.
fn passed(timetable: &Timetable, first: DateTime<Utc>, now: DateTime<Utc>) -> (u64, DateTime<Utc>) {
    if let Timetable::Every(interval) = timetable {
        let steps = (now - first).num_milliseconds() / interval.num_milliseconds().max(1);
        return (steps as u64 + 1, first + *interval * steps as i32);
    }
    let mut count = 1;
    let mut latest = first;
    while let Some(t) = timetable.next_after(latest).filter(|t| *t <= now) {
        count += 1;
        latest = t;
        if count == MAX_COUNTED {
            // The count stops here; the latest is found directly.
            latest = timetable.latest_at_or_before(now).unwrap_or(latest);
            break;
        }
    }
    (count, latest)
}

#[cfg(test)]
mod tests;
